// A Server-Sent Events subscription that keeps itself connected.
//
// The browser's EventSource retries by itself after a dropped connection (sending
// Last-Event-ID, so the log stream resumes exactly), but gives up for good when a retry
// gets an error status — e.g. 502 from nginx while the API is down. Then this opens a
// new EventSource after a growing delay (capped), until the API answers again.

export type StreamState = 'connecting' | 'open' | 'down';

export interface EventSourceLike {
  readyState: number;
  onopen: ((ev: Event) => unknown) | null;
  onerror: ((ev: Event) => unknown) | null;
  addEventListener(type: string, listener: (ev: MessageEvent) => void): void;
  close(): void;
}

export interface StreamOptions {
  /** Named events and what to do with their parsed data. */
  handlers: Record<string, (data: unknown) => void>;
  onState?: (state: StreamState) => void;
  create?: (url: string) => EventSourceLike;
  schedule?: (fn: () => void, ms: number) => unknown;
  cancel?: (handle: unknown) => void;
  minDelayMs?: number;
  maxDelayMs?: number;
}

const CLOSED = 2;

export class LiveStream {
  private source: EventSourceLike | null = null;
  private timer: unknown = null;
  private delay: number;
  private stopped = true;
  state: StreamState = 'connecting';

  constructor(
    private readonly url: string,
    private readonly options: StreamOptions,
  ) {
    this.delay = options.minDelayMs ?? 500;
  }

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    this.clearTimer();
    this.source?.close();
    this.source = null;
  }

  /** Drops the connection and opens a fresh one (no Last-Event-ID): a new snapshot. */
  restart(): void {
    this.source?.close();
    this.source = null;
    this.clearTimer();
    if (!this.stopped) this.open();
  }

  private open(): void {
    const create = this.options.create ?? ((url: string) => new EventSource(url));
    const source = create(this.url);
    this.source = source;
    this.setState('connecting');
    source.onopen = () => {
      if (this.source !== source) return;
      this.delay = this.options.minDelayMs ?? 500;
      this.setState('open');
    };
    source.onerror = () => {
      if (this.source !== source) return;
      this.setState('down');
      if (source.readyState === CLOSED) {
        // The browser gave up: retry ourselves.
        source.close();
        this.source = null;
        this.retryLater();
      }
    };
    for (const [name, handle] of Object.entries(this.options.handlers)) {
      source.addEventListener(name, (event: MessageEvent) => {
        if (this.source !== source) return;
        let data: unknown;
        try {
          data = JSON.parse(String(event.data));
        } catch {
          console.warn(`${this.url}: event ${name} is not JSON`);
          return;
        }
        handle(data);
      });
    }
  }

  private retryLater(): void {
    if (this.stopped) return;
    const schedule = this.options.schedule ?? ((fn, ms) => setTimeout(fn, ms));
    const wait = this.delay;
    this.delay = Math.min(this.delay * 2, this.options.maxDelayMs ?? 5000);
    this.timer = schedule(() => {
      this.timer = null;
      if (!this.stopped) this.open();
    }, wait);
  }

  private clearTimer(): void {
    if (this.timer !== null) {
      const cancel = this.options.cancel ?? ((h: unknown) => clearTimeout(h as number));
      cancel(this.timer);
      this.timer = null;
    }
  }

  private setState(state: StreamState): void {
    if (this.state !== state) {
      this.state = state;
      this.options.onState?.(state);
    }
  }
}

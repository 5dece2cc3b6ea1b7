import { describe, expect, it } from 'vitest';
import { LiveStream, type EventSourceLike, type StreamState } from '../../src/lib/stream';

class FakeSource implements EventSourceLike {
  readyState = 0;
  onopen: ((ev: Event) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;
  closed = false;
  listeners = new Map<string, (ev: MessageEvent) => void>();
  constructor(public url: string) {}
  addEventListener(type: string, listener: (ev: MessageEvent) => void) {
    this.listeners.set(type, listener);
  }
  close() {
    this.closed = true;
    this.readyState = 2;
  }
  open() {
    this.readyState = 1;
    this.onopen?.(new Event('open'));
  }
  fail(giveUp: boolean) {
    this.readyState = giveUp ? 2 : 0;
    this.onerror?.(new Event('error'));
  }
  emit(type: string, data: string) {
    this.listeners.get(type)?.(new MessageEvent(type, { data }));
  }
}

function harness() {
  const sources: FakeSource[] = [];
  const timers: { fn: () => void; ms: number }[] = [];
  const states: StreamState[] = [];
  const received: unknown[] = [];
  const stream = new LiveStream('/api/x', {
    handlers: { tick: (d) => received.push(d) },
    onState: (s) => states.push(s),
    create: (url) => {
      const s = new FakeSource(url);
      sources.push(s);
      return s;
    },
    schedule: (fn, ms) => timers.push({ fn, ms }),
    cancel: () => {},
    minDelayMs: 500,
    maxDelayMs: 2000,
  });
  return { stream, sources, timers, states, received };
}

describe('LiveStream', () => {
  it('parses named events and reports open', () => {
    const h = harness();
    h.stream.start();
    h.sources[0]?.open();
    h.sources[0]?.emit('tick', '{"n":1}');
    h.sources[0]?.emit('tick', 'not json');
    expect(h.received).toEqual([{ n: 1 }]);
    expect(h.states).toEqual(['open']);
  });

  it('shows down while the browser retries, and open again after', () => {
    const h = harness();
    h.stream.start();
    h.sources[0]?.open();
    h.sources[0]?.fail(false);
    expect(h.stream.state).toBe('down');
    expect(h.timers).toHaveLength(0); // the browser retries this one itself
    h.sources[0]?.open();
    expect(h.stream.state).toBe('open');
  });

  it('reopens with a growing, capped delay when the browser gives up', () => {
    const h = harness();
    h.stream.start();
    for (let i = 0; i < 4; i++) {
      h.sources[i]?.fail(true);
      h.timers[i]?.fn();
    }
    expect(h.timers.map((t) => t.ms)).toEqual([500, 1000, 2000, 2000]);
    expect(h.sources).toHaveLength(5);
    h.sources[4]?.open();
    expect(h.stream.state).toBe('open');
    h.sources[4]?.fail(true);
    expect(h.timers[4]?.ms).toBe(500); // an open connection resets the delay
  });

  it('ignores a replaced connection and stops for good', () => {
    const h = harness();
    h.stream.start();
    h.stream.restart();
    expect(h.sources[0]?.closed).toBe(true);
    h.sources[0]?.emit('tick', '{"old":true}');
    h.sources[1]?.emit('tick', '{"new":true}');
    expect(h.received).toEqual([{ new: true }]);
    h.stream.stop();
    expect(h.sources[1]?.closed).toBe(true);
  });
});

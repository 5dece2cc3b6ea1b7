// The terminal's lines: the newest `size` logs, oldest first (newest at the bottom).

import type { LogEntry } from './types';

export const TERMINAL_LINES = 20;

export function appendLogs(current: LogEntry[], incoming: LogEntry[], size = TERMINAL_LINES): LogEntry[] {
  const next = current.concat(incoming);
  return next.length > size ? next.slice(next.length - size) : next;
}

/** `08:00:00.290` from an RFC 3339 time (UTC, as the API sends it). */
export function clock(rfc3339: string): string {
  const match = /T(\d{2}:\d{2}:\d{2})(\.\d{3})?/.exec(rfc3339);
  return match ? `${match[1]}${match[2] ?? '.000'}` : '--:--:--.---';
}

export interface TerminalLine {
  time: string;
  source: string;
  band: string;
  album: string;
  year: number;
  rank: number;
}

export function toLine(log: LogEntry): TerminalLine {
  return {
    time: clock(log.accepted_at),
    source: log.source,
    band: log.name,
    album: log.album,
    year: log.year,
    rank: log.rank,
  };
}

/** The line as plain text (what a screen reader and a copy-paste get). */
export function lineText(line: TerminalLine): string {
  return `${line.time} [${line.source}] ${line.band} — ${line.album} (${line.year}) rank ${line.rank}`;
}

import { describe, expect, it } from 'vitest';
import { mount } from '@vue/test-utils';
import TerminalView from '../../src/components/TerminalView.vue';
import { appendLogs, clock, lineText, toLine } from '../../src/lib/terminal';
import type { LogEntry } from '../../src/lib/types';

function log(i: number, source = i % 2 ? 'grpc' : 'wasm'): LogEntry {
  return {
    id: `votes-0-${i}`,
    vote_id: `id-${i}`,
    name: 'Alux Nahual',
    album: 'Conquista',
    year: 1982,
    rank: (i % 10) + 1,
    source,
    accepted_at: `2027-01-15T08:00:${String(i % 60).padStart(2, '0')}.290123Z`,
    logged_at: '2027-01-15T08:00:00.300000Z',
    partition: 0,
    offset: i,
    member: 'consumer-1',
  };
}

describe('terminal buffer', () => {
  it('keeps the newest 20, oldest first', () => {
    const first = appendLogs([], Array.from({ length: 15 }, (_, i) => log(i)));
    expect(first.map((l) => l.offset)).toEqual([...Array(15).keys()]);
    const next = appendLogs(first, Array.from({ length: 10 }, (_, i) => log(15 + i)));
    expect(next).toHaveLength(20);
    expect(next[0]?.offset).toBe(5);
    expect(next[19]?.offset).toBe(24);
  });

  it('formats a line with time, source, band, album, year and rank', () => {
    expect(clock('2027-01-15T08:00:07.290123Z')).toBe('08:00:07.290');
    expect(clock('garbage')).toBe('--:--:--.---');
    expect(lineText(toLine(log(7)))).toBe('08:00:07.290 [grpc] Alux Nahual — Conquista (1982) rank 8');
  });
});

describe('TerminalView', () => {
  it('renders one row per log, newest at the bottom', () => {
    const logs = appendLogs([], Array.from({ length: 25 }, (_, i) => log(i)));
    const wrapper = mount(TerminalView, { props: { logs } });
    const rows = wrapper.findAll('[data-testid="log-row"]');
    expect(rows).toHaveLength(20);
    expect(rows[0]?.attributes('data-id')).toBe('votes-0-5');
    expect(rows[19]?.attributes('data-id')).toBe('votes-0-24');
    expect(rows[19]?.text()).toContain('wasm');
    expect(rows[19]?.text()).toContain('rank 5');
    expect(wrapper.find('[role="log"]').attributes('tabindex')).toBe('0');
  });

  it('says it is waiting when there are no logs', () => {
    const wrapper = mount(TerminalView, { props: { logs: [] } });
    expect(wrapper.findAll('[data-testid="log-row"]')).toHaveLength(0);
    expect(wrapper.text()).toContain('waiting for votes');
  });
});

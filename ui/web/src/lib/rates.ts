// Votes per second by producer for the line chart: the change of each producer's
// accepted-vote counter between two race events, over the time between them.

import type { RaceView } from './types';

export interface RatePoint {
  at: number; // ms since epoch (client clock)
  perSecond: number;
}

export interface RateHistory {
  last: Map<string, { at: number; total: number }>;
  series: Map<string, RatePoint[]>;
}

export const RATE_WINDOW_MS = 60_000;

export function emptyHistory(): RateHistory {
  return { last: new Map(), series: new Map() };
}

export function addRace(history: RateHistory, view: RaceView, at: number): RateHistory {
  const series = new Map(history.series);
  const last = new Map(history.last);
  for (const runner of view.producers) {
    const before = last.get(runner.producer);
    last.set(runner.producer, { at, total: runner.accepted_total });
    const points = (series.get(runner.producer) ?? []).filter((p) => at - p.at <= RATE_WINDOW_MS);
    if (before && at > before.at && runner.accepted_total >= before.total) {
      const perSecond = ((runner.accepted_total - before.total) * 1000) / (at - before.at);
      points.push({ at, perSecond: Math.round(perSecond * 100) / 100 });
    }
    series.set(runner.producer, points);
  }
  return { last, series };
}

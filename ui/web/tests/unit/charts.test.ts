import { describe, expect, it } from 'vitest';
import { albumBarOption, rateLineOption, recentRates } from '../../src/lib/charts';
import { addRace, emptyHistory } from '../../src/lib/rates';
import type { RaceView, Results } from '../../src/lib/types';

const results: Results = {
  total: 7,
  bands: [],
  albums: [
    { band: 'Alux Nahual', album: 'Conquista', year: 1982, votes: 5, rank_sum: 20, avg_rank: 4 },
    { band: 'Bohemia Suburbana', album: 'Imaginaria Sonora', year: 2015, votes: 2, rank_sum: 3, avg_rank: 1.5 },
  ],
  sources: { grpc: 4, wasm: 3 },
};

function race(wasm: number, grpc: number): RaceView {
  const runner = (producer: string, accepted_total: number) => ({
    producer,
    up: true,
    error: null,
    votes_per_s: null,
    requests_per_s: null,
    p50_ms: null,
    p99_ms: null,
    accepted_total,
    window_s: 0,
  });
  return { producers: [runner('wasm', wasm), runner('grpc', grpc)] };
}

describe('charts', () => {
  it('bars are the album counts, first album on top', () => {
    const option = albumBarOption(results);
    expect(option.yAxis.data).toEqual(['Imaginaria Sonora · Bohemia Suburbana', 'Conquista · Alux Nahual']);
    expect(option.series[0]?.data).toEqual([2, 5]);
  });

  it('the rate line is the change of accepted votes over time, per producer', () => {
    let h = emptyHistory();
    h = addRace(h, race(100, 50), 1_000);
    expect(h.series.get('wasm')).toEqual([]);
    h = addRace(h, race(130, 50), 3_000);
    h = addRace(h, race(130, 60), 4_000);
    expect(h.series.get('wasm')).toEqual([
      { at: 3_000, perSecond: 15 },
      { at: 4_000, perSecond: 0 },
    ]);
    expect(h.series.get('grpc')?.map((p) => p.perSecond)).toEqual([0, 10]);
    // A restarted producer (counter went down) adds no point; old points age out.
    h = addRace(h, race(5, 60), 70_000);
    expect(h.series.get('wasm')).toEqual([]);
    const option = rateLineOption(h, 70_500);
    expect(option.series.map((s) => s.name)).toEqual(['grpc', 'wasm']);
    expect(option.series[0]?.data).toEqual([[70_000, 0]]);
    expect([option.xAxis.min, option.xAxis.max]).toEqual([10_500, 70_500]);
    expect(recentRates(h, 'grpc')).toBe('0');
    expect(recentRates(h, 'nobody')).toBe('');
  });
});

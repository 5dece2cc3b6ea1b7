// ECharts options from API data; pure, so they are unit-tested without a canvas.

import type { Results } from './types';
import { RATE_WINDOW_MS, type RateHistory } from './rates';

const SOURCE_COLORS: Record<string, string> = { grpc: '#4ea1ff', wasm: '#f2b134' };

export function albumLabel(a: { album: string; band: string }): string {
  return `${a.album} · ${a.band}`;
}

export function albumBarOption(results: Results) {
  const albums = [...results.albums].reverse(); // first album on top
  return {
    animationDuration: 300,
    grid: { left: 8, right: 48, top: 8, bottom: 8, containLabel: true },
    tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' } },
    xAxis: { type: 'value', minInterval: 1, axisLabel: { color: '#b8c2cc' }, splitLine: { lineStyle: { color: '#2a323c' } } },
    yAxis: {
      type: 'category',
      data: albums.map(albumLabel),
      axisLabel: { color: '#e6edf3', width: 170, overflow: 'truncate' },
    },
    series: [
      {
        name: 'votes',
        type: 'bar',
        data: albums.map((a) => a.votes),
        itemStyle: { color: '#3fb950' },
        label: { show: true, position: 'right', color: '#e6edf3' },
      },
    ],
  };
}

export function rateLineOption(history: RateHistory, now: number) {
  const producers = [...history.series.keys()].sort();
  return {
    animation: false,
    grid: { left: 8, right: 16, top: 32, bottom: 8, containLabel: true },
    legend: { data: producers, textStyle: { color: '#e6edf3' }, top: 0 },
    tooltip: { trigger: 'axis' },
    // Always the last minute, also before the first points arrive.
    xAxis: { type: 'time', min: now - RATE_WINDOW_MS, max: now, axisLabel: { color: '#b8c2cc', hideOverlap: true } },
    yAxis: { type: 'value', name: 'votes/s', nameTextStyle: { color: '#b8c2cc' }, axisLabel: { color: '#b8c2cc' }, splitLine: { lineStyle: { color: '#2a323c' } } },
    series: producers.map((p) => ({
      name: p,
      type: 'line',
      showSymbol: false,
      smooth: false,
      itemStyle: { color: SOURCE_COLORS[p] ?? '#c9d1d9' },
      data: (history.series.get(p) ?? []).map((pt) => [pt.at, pt.perSecond]),
    })),
  };
}

/** The newest `n` rates of a producer, for the chart's data attributes and tests. */
export function recentRates(history: RateHistory, producer: string, n = 10): string {
  return (history.series.get(producer) ?? []).slice(-n).map((p) => p.perSecond).join(',');
}

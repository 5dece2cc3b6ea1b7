// The API's JSON shapes (ui/api: logs.rs, results.rs, race.rs).

export interface LogEntry {
  id: string;
  vote_id: string;
  name: string;
  album: string;
  year: number;
  rank: number;
  source: string;
  ballot_version?: string;
  accepted_at: string;
  logged_at: string;
  partition: number;
  offset: number;
  member: string;
}

export interface BandTotal {
  band: string;
  votes: number;
}

export interface AlbumTotal {
  band: string;
  album: string;
  year: number | null;
  votes: number;
  rank_sum: number;
  avg_rank: number | null;
}

export interface Results {
  total: number;
  bands: BandTotal[];
  albums: AlbumTotal[];
  sources: Record<string, number>;
}

export interface Runner {
  producer: string;
  up: boolean;
  error: string | null;
  votes_per_s: number | null;
  requests_per_s: number | null;
  p50_ms: number | null;
  p99_ms: number | null;
  accepted_total: number;
  window_s: number;
}

export interface RaceView {
  producers: Runner[];
}

/** One version of a vote function, as `/api/functions` describes it. */
export interface FunctionVersion {
  version: string;
  short: string;
  source: string;
  uploaded_at_micros: number;
  role: 'active' | 'canary' | 'idle';
  percent: number;
  accepted: number;
  rejected: number;
  failed: number;
  unavailable: number;
}

export interface VoteFunction {
  name: string;
  active: string | null;
  canary: { version: string; percent: number } | null;
  versions: FunctionVersion[];
}

export interface FunctionsView {
  functions: VoteFunction[];
}

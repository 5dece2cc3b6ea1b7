#!/usr/bin/env python3
"""Writes a file of votes for the ballot in config/ballot.toml, one JSON line each:

    {"class": "valid", "expect": 202, "content_type": "application/json", "body": "{...}"}

`body` is the exact request body (a string, so malformed JSON can be sent too), `expect`
the status a producer must answer, `class` which case it is. Valid votes follow a skew
(a few albums get most votes, high ranks are more common, spelling and number types vary
as people and clients do); `--invalid-share` of the lines are invalid, spread over every
class the producers reject. The same `--seed` writes the same file.

    python3 locust/gen_votes.py --count 20000 --invalid-share 0.05 --seed 7 --out votes.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BALLOT = ROOT / "config" / "ballot.toml"
JSON = "application/json"
MAX_BODY_BYTES = 16 * 1024  # the producers' body limit (vote::MAX_BODY_BYTES)


def load_ballot(path: Path) -> list[tuple[str, str, int]]:
    """(band, album, year) for every album on the ballot, in file order."""
    with open(path, "rb") as f:
        ballot = tomllib.load(f)
    return [(b["name"], a["title"], int(a["year"])) for b in ballot["band"] for a in b["albums"]]


def album_weights(n: int) -> list[float]:
    # Zipf-like popularity (s = 1): the favourite album gets about twice the second's votes.
    return [1.0 / (i + 1) for i in range(n)]


RANK_WEIGHTS = [1, 1, 1, 2, 3, 4, 6, 8, 10, 12]  # ranks 1..10: fans rate high


class Generator:
    def __init__(self, ballot: list[tuple[str, str, int]], rng: random.Random):
        self.ballot = ballot
        self.rng = rng
        # Popularity order is drawn from the seed, not the file order.
        self.popular = rng.sample(ballot, len(ballot))
        self.weights = album_weights(len(ballot))

    def pick(self) -> tuple[str, str, int]:
        return self.rng.choices(self.popular, self.weights)[0]

    def rank(self) -> int:
        return self.rng.choices(range(1, 11), RANK_WEIGHTS)[0]

    def spell(self, text: str) -> str:
        """How people type a name: mostly as printed, sometimes cased or padded otherwise."""
        r = self.rng.random()
        if r < 0.80:
            return text
        if r < 0.90:
            return text.lower()
        if r < 0.95:
            return text.upper()
        return f"  {text} "

    def number(self, value: int):
        # The seed's clients send strings ("1999"); others send integers.
        return str(value) if self.rng.random() < 0.6 else value

    def vote(self) -> dict:
        band, album, year = self.pick()
        return {"name": self.spell(band), "album": self.spell(album),
                "year": self.number(year), "rank": self.number(self.rank())}

    # Invalid classes: name → (expected status, builder of the body). Each mirrors one rule
    # of the vote logic (vote/src/parse.rs) or of the HTTP edge (common/src/producer_http.rs).
    def invalid_classes(self):
        other_band_album = self._album_of_another_band
        return {
            "malformed_json": (400, lambda: json.dumps(self.vote())[:-7]),
            "not_an_object": (400, lambda: json.dumps([self.vote()])),
            "wrong_type": (400, self._wrong_type),
            "unknown_field": (422, lambda: json.dumps({**self.vote(), "rnak": self.rank()})),
            "missing_field": (422, self._missing_field),
            "unknown_band": (422, lambda: json.dumps({**self.vote(), "name": "Los Tigres del Sur"})),
            "album_not_of_band": (422, other_band_album),
            "wrong_year": (422, self._wrong_year),
            "rank_out_of_range": (422, self._rank_out_of_range),
            "too_large": (413, self._too_large),
            "wrong_content_type": (415, lambda: json.dumps(self.vote())),
        }

    def _wrong_type(self) -> str:
        vote = self.vote()
        field, value = self.rng.choice(
            [("name", 1), ("album", None), ("year", "19x2"), ("rank", 4.5), ("rank", [4]), ("year", True)])
        vote[field] = value
        return json.dumps(vote)

    def _missing_field(self) -> str:
        vote = self.vote()
        del vote[self.rng.choice(list(vote))]
        return json.dumps(vote)

    def _album_of_another_band(self) -> str:
        band, _, _ = self.pick()
        others = [(a, y) for b, a, y in self.ballot if b != band]
        album, year = self.rng.choice(others)
        return json.dumps({"name": band, "album": album, "year": year, "rank": self.rank()})

    def _wrong_year(self) -> str:
        vote = self.vote()
        band, album, year = next(e for e in self.ballot if e[1].lower() == vote["album"].strip().lower()
                                 and e[0].lower() == vote["name"].strip().lower())
        vote["year"] = self.number(year + self.rng.choice([-1, 1, 10]))
        return json.dumps(vote)

    def _rank_out_of_range(self) -> str:
        vote = self.vote()
        vote["rank"] = self.number(self.rng.choice([0, 11, -3, 100]))
        return json.dumps(vote)

    def _too_large(self) -> str:
        vote = json.dumps(self.vote())
        # Valid JSON padded past the limit: only its size is wrong.
        return vote + " " * (MAX_BODY_BYTES + 1 - len(vote.encode()))

    def lines(self, count: int, invalid_share: float):
        classes = self.invalid_classes()
        names = sorted(classes)
        n_invalid = round(count * invalid_share)
        # Every class appears when there is room for each (round robin over the classes),
        # positions drawn from the seed.
        kinds = [names[i % len(names)] for i in range(n_invalid)] + ["valid"] * (count - n_invalid)
        self.rng.shuffle(kinds)
        for kind in kinds:
            if kind == "valid":
                yield {"class": "valid", "expect": 202, "content_type": JSON,
                       "body": json.dumps(self.vote(), ensure_ascii=False)}
            else:
                status, build = classes[kind]
                content_type = "text/plain" if kind == "wrong_content_type" else JSON
                yield {"class": kind, "expect": status, "content_type": content_type, "body": build()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ballot", type=Path, default=DEFAULT_BALLOT, help="ballot TOML (default: config/ballot.toml)")
    parser.add_argument("--count", type=int, default=10_000, help="lines to write")
    parser.add_argument("--invalid-share", type=float, default=0.05, help="share of invalid votes, 0..1")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same file)")
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    args = parser.parse_args(argv)
    if not 0 <= args.invalid_share <= 1:
        parser.error("--invalid-share must be between 0 and 1")

    gen = Generator(load_ballot(args.ballot), random.Random(args.seed))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for line in gen.lines(args.count, args.invalid_share):
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

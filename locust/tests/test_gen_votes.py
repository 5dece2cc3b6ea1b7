"""The generator: its output fits the ballot, every rejected class is there, the same seed
gives the same file, and each line's tag is what the real vote logic answers (the built
vote.wasm command module, run under node:wasi — the same code both producers run)."""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

from conftest import ROOT

GEN = ROOT / "locust" / "gen_votes.py"
VOTE_WASM = ROOT / "target/wasm32-wasip1/wasm/vote.wasm"
CLASSES = {"valid": 202, "malformed_json": 400, "not_an_object": 400, "wrong_type": 400, "unknown_field": 422,
           "missing_field": 422, "unknown_band": 422, "album_not_of_band": 422, "wrong_year": 422,
           "rank_out_of_range": 422, "too_large": 413, "wrong_content_type": 415}


def generate(tmp_path: Path, count=2000, share=0.25, seed=11, name="votes.jsonl") -> Path:
    out = tmp_path / name
    subprocess.run(["python3", str(GEN), "--count", str(count), "--invalid-share", str(share),
                    "--seed", str(seed), "--out", str(out)], check=True)
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lines_fit_the_ballot_and_every_class_is_there(tmp_path):
    lines = read(generate(tmp_path))
    assert len(lines) == 2000
    assert sum(1 for line in lines if line["class"] != "valid") == 500
    assert {line["class"] for line in lines} == set(CLASSES)
    for line in lines:
        assert line["expect"] == CLASSES[line["class"]], line
    with open(ROOT / "config/ballot.toml", "rb") as f:
        ballot = {(b["name"].lower(), a["title"].lower()): a["year"] for b in tomllib.load(f)["band"] for a in b["albums"]}
    seen = set()
    for line in lines:
        if line["class"] != "valid":
            continue
        vote = json.loads(line["body"])
        key = (vote["name"].strip().lower(), vote["album"].strip().lower())
        assert ballot[key] == int(vote["year"]), vote
        assert 1 <= int(vote["rank"]) <= 10
        seen.add(key)
    # The skew still leaves every album some votes at this size.
    assert seen == set(ballot)


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    a = generate(tmp_path, seed=5, name="a.jsonl").read_bytes()
    b = generate(tmp_path, seed=5, name="b.jsonl").read_bytes()
    c = generate(tmp_path, seed=6, name="c.jsonl").read_bytes()
    assert a == b
    assert a != c


def test_tags_match_the_vote_logic(tmp_path):
    assert VOTE_WASM.exists(), f"{VOTE_WASM} is missing: make modules"
    lines = read(generate(tmp_path))
    bodies = tmp_path / "bodies.txt"
    # One body per line; none holds a newline (json.dumps escapes them).
    bodies.write_text("".join(line["body"] + "\n" for line in lines), encoding="utf-8")
    # stdout to a file, not a pipe: node's WASI writes to a pipe non-blocking and a full
    # pipe failed the module with EAGAIN ("os error 6") about one run in eight.
    answers = tmp_path / "answers.txt"
    with open(bodies, "rb") as stdin, open(answers, "wb") as stdout:
        run = subprocess.run(["node", "--no-warnings", str(ROOT / "wasm-modules/tools/run-node-wasi.mjs"),
                              str(VOTE_WASM)], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    assert run.returncode == 0, f"vote.wasm under node exited {run.returncode}: {run.stderr.decode(errors='replace')}"
    out = answers.read_bytes()
    statuses = [json.loads(x)["status"] for x in out.decode().splitlines()]
    assert len(statuses) == len(lines)
    for line, status in zip(lines, statuses):
        # 415 is the HTTP edge's (content type); the body itself is a valid vote.
        want = 202 if line["class"] == "wrong_content_type" else line["expect"]
        assert status == want, (line["class"], line["body"][:200], status)

#!/usr/bin/env python3
"""Runs the shell commands of the docs, so they cannot go stale silently.

Which blocks run (the rules are also in docs/manual.md, "Commands in these docs"):
- A fenced block whose info string is exactly `sh` is run, from the repository root, in its
  own `bash -euo pipefail` (variables do not carry over between blocks), with a timeout.
- A `sh` block right after `<!-- doc-test: skip (why) -->` is not run; the reason is required.
- A `sh` block right after `<!-- doc-test: covered by <test> -->` is not run: that test runs it.
- Blocks with any other info string (`console` for commands that need GKE, Docker Hub or a
  person at the keyboard, `text` for output) are never run.
- Files this test does not own the markers of (README.md is the lead's) can name single
  commands in COVERED below instead; an entry that matches no command fails the test, so the
  table cannot go stale either.
- A command whose last line ends in `# expect: TEXT` must print TEXT (stdout or stderr).
- Relative links (files, images, `#anchors` in Markdown files) must resolve.

The commands talk to a private pipeline this script starts from the debug build (both
producers, a consumer member, the API; testkit/py/urna_pipeline.py) on free ports with its own topic, consumer group,
Redis prefix and Mongo collection, so it runs beside `make up` and other tests. The docs'
default addresses (localhost:8081, 127.0.0.1:8080, …) and Redis keys (`votes:bands`, …) are
rewritten to the private ones before a block runs; the report prints each block as run.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ["docs/manual.md", "README.md"]
BLOCK_TIMEOUT_S = 150

# Commands of README.md (whose markers are not ours to add) that are run elsewhere, or
# cannot run here: exact command text (continuation lines joined, comment dropped) → which
# test runs it, or why none can.
COVERED = {
    "make up": "covered by e2e/test_make_up.py: `make up` itself with URNA_PROFILE=debug, DETACH=1 and a short "
               "load, on a stack and ports of its own (the release build is the one thing it does not do)",
    "make test": "covered by .ci/run, which is exactly `make test` (this doc-test is one of its suites)",
    "wasmtime run target/wasm32-wasip1/wasm/vote.wasm < locust/data/sample-votes.jsonl":
        "no wasmtime CLI here; covered by cargo test -p vote-module (tests/runtime.rs runs vote.wasm under wasmtime, the library)",
    "wasmedge compile target/wasm32-wasip1/wasm/vote.wasm /tmp/vote.aot.wasm":
        "WasmEdge is not installed by the project (no registry serves it; built by hand here to measure them, see README's figures and host/README.md, 'What ran on a real WasmEdge here')",
    "wasmedge run --run-mode aot /tmp/vote.aot.wasm < locust/data/sample-votes.jsonl":
        "WasmEdge is not installed by the project (no registry serves it; built by hand here to measure them, see README's figures and host/README.md, 'What ran on a real WasmEdge here')",
}

MARKER = re.compile(r"^<!--\s*doc-test:\s*(skip|covered by)\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(```|~~~)\s*([^\s`]*)\s*$")
EXPECT = re.compile(r"\s#\s*expect:\s*(.+?)\s*$")
PORTS = {  # the docs' default ports → the private pipeline's, by role
    "8080": "api", "8081": "wasm", "8082": "grpc", "9101": "consumer", "9110": "grpc_metrics",
}
REDIS_KEYS = re.compile(r"\bvotes:(total|bands|albums|rank_sum|sources|owner|offsets:[\w-]+)\b")


@dataclass
class Block:
    file: str
    line: int
    info: str
    text: str
    marker: tuple[str, str] | None = None
    covered: list[tuple[str, str]] = field(default_factory=list)


def blocks_of(path: Path, rel: str) -> list[Block]:
    """Fenced blocks with the marker comment right before each (blank lines allowed)."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise SystemExit(f"{rel}:{start + 1}: code fence never closed")
        i += 1
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = None
        if j >= 0 and (mm := MARKER.match(lines[j].strip())):
            marker = (mm.group(1), mm.group(2))
            if not marker[1]:
                raise SystemExit(f"{rel}:{j + 1}: a doc-test marker needs its reason: {lines[j].strip()}")
        out.append(Block(rel, start + 1, info, "\n".join(body) + "\n", marker))
    return out


def commands(text: str) -> list[tuple[int, int, str]]:
    """Top-level commands: (first line index, last line index, text with continuations joined)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        j = i
        while lines[j].rstrip().endswith("\\") and j + 1 < len(lines):
            j += 1
        joined = " ".join(l.rstrip().rstrip("\\").strip() for l in lines[i:j + 1])
        out.append((i, j, joined))
        i = j + 1
    return out


def strip_comment(cmd: str) -> str:
    """The command without a trailing `# …` comment (quotes respected well enough for docs)."""
    quote = None
    for k, ch in enumerate(cmd):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or cmd[k - 1].isspace()):
            return cmd[:k].rstrip()
    return cmd.strip()


def prepare(block: Block, used: set[str]) -> str:
    """The block's script: covered commands replaced by a note, `# expect:` turned into a check."""
    lines = block.text.splitlines()
    out: list[str] = []
    for first, last, joined in commands(block.text):
        bare = strip_comment(joined)
        if bare in COVERED:
            used.add(bare)
            block.covered.append((bare, COVERED[bare]))
            out.append(f"echo {shq('[doc-test] not run here (see COVERED): ' + bare)}")
            continue
        m = EXPECT.search(lines[last])
        if not m:
            out.extend(lines[first:last + 1])
            continue
        want = m.group(1)
        cmd = lines[first:last] + [lines[last][:m.start()]]
        out.append("__out=$(")
        out.extend(cmd)
        out.append(" 2>&1)")
        out.append('printf "%s\\n" "$__out"')
        out.append(f"grep -qF -- {shq(want)} <<<\"$__out\" || "
                   f"{{ echo {shq('[doc-test] expected output containing: ' + want)} >&2; exit 1; }}")
    return "\n".join(out) + "\n"


def shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def rewrite(script: str, ports: dict[str, int], prefix: str) -> str:
    for default, role in PORTS.items():
        script = re.sub(rf"\b(localhost|127\.0\.0\.1):{default}\b", f"127.0.0.1:{ports[role]}", script)
    return REDIS_KEYS.sub(lambda m: f"{prefix}:{m.group(1)}", script)


def run_block(script: str, env: dict[str, str], log: Path) -> tuple[int, float]:
    """One block in its own bash and process group; output to a file, not a pipe (node's WASI
    writes stdout non-blocking and fails with EAGAIN on a full pipe)."""
    t0 = time.monotonic()
    with open(log, "wb") as out:
        p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            with open(log, "ab") as o:
                o.write(f"\n[doc-test] timed out after {BLOCK_TIMEOUT_S} s\n".encode())
            rc = 124
    return rc, time.monotonic() - t0


def start_pipeline(tmp: Path):
    """The suites' shared private pipeline (testkit/py/urna_pipeline.py: both producers, one
    consumer member), plus the API reading that member's counts and logs."""
    sys.path.insert(0, str(ROOT / "testkit" / "py"))
    from urna_pipeline import Pipeline, Service, free_port  # noqa: E402

    p = Pipeline("doc-test", tmp, members=1)
    api_port = free_port()
    member = p.services[p.members[0]].env
    p.services["api"] = Service("api", "urna-api", {
        **{k: member[k] for k in ("URNA_KAFKA_BROKERS", "URNA_KAFKA_TOPIC", "URNA_GROUP_ID", "URNA_REDIS_PREFIX",
                                  "URNA_REDIS_URL", "URNA_MONGO_URL", "URNA_MONGO_DB", "URNA_MONGO_COLLECTION")},
        "URNA_LISTEN": f"127.0.0.1:{api_port}",
        "URNA_RACE_PRODUCERS": f"wasm={p.wasm_url},grpc={p.grpc_url}",
        "URNA_WEB_DIR": str(ROOT / "ui/web/dist")}, f"http://127.0.0.1:{api_port}")
    try:
        p.start()
    except BaseException:
        p.stop()
        p.drop_state()
        raise
    port_of = lambda url: int(url.rsplit(":", 1)[1])  # noqa: E731
    ports = {"api": api_port, "wasm": port_of(p.wasm_url), "grpc": port_of(p.grpc_url),
             "consumer": port_of(p.member_url()), "grpc_metrics": port_of(p.grpc_server_metrics)}
    return p, ports


LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(path: Path, rel: str) -> list[str]:
    """Relative links of a page whose file, or heading anchor in a Markdown file, is missing."""
    bad, in_fence = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            in_fence = not in_fence
        if in_fence:
            continue
        for m in LINK.finditer(line):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file, _, frag = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{rel}:{n}: {target} (no such file)")
            elif frag and dest.suffix == ".md":
                heads = {anchor(h.lstrip("#")) for h in dest.read_text(encoding="utf-8").splitlines()
                         if re.match(r"^#{1,6} ", h)}
                if frag not in heads:
                    bad.append(f"{rel}:{n}: {target} (no such heading)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=DEFAULT_FILES)
    ap.add_argument("--list", action="store_true", help="only list what would run, skip and be covered")
    args = ap.parse_args()

    blocks = [b for f in args.files for b in blocks_of(ROOT / f, f)]
    bad = [x for f in args.files for x in broken_links(ROOT / f, f)]
    if bad:
        print("[doc-test] broken links:", *bad, sep="\n  ", file=sys.stderr)
        return 1
    used: set[str] = set()
    runnable = []
    for b in blocks:
        if b.info != "sh":
            continue
        if b.marker:
            print(f"[doc-test] {b.file}:{b.line}: {b.marker[0]} {b.marker[1]}")
            continue
        runnable.append((b, prepare(b, used)))
    stale = [c for c in COVERED if c not in used] if set(DEFAULT_FILES) <= set(args.files) else []
    if stale:
        print("[doc-test] COVERED names commands no doc has any more (remove them):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    for b, _ in runnable:
        for cmd, where in b.covered:
            print(f"[doc-test] {b.file}:{b.line}: `{cmd}` not run here: {where}")
    if args.list:
        for b, script in runnable:
            print(f"--- run {b.file}:{b.line}\n{script}", end="")
        return 0

    failed = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="urna-doc-test-") as tmpdir:
        tmp = Path(tmpdir)
        pipeline, ports = start_pipeline(tmp)
        try:
            print(f"[doc-test] private pipeline up in {time.monotonic() - t_all:.1f} s: {ports}, "
                  f"topic/prefix {pipeline.prefix}")
            env = dict(os.environ)
            for n, (b, script) in enumerate(runnable):
                script = rewrite(script, ports, pipeline.prefix)
                print(f"\n=== {b.file}:{b.line}\n{script}", end="", flush=True)
                log = tmp / f"block-{n}.log"
                rc, secs = run_block(script, env, log)
                text = log.read_text(errors="replace")
                shown = text if len(text) < 4000 else text[:1500] + "\n[… output cut …]\n" + text[-2000:]
                print("--- output\n" + shown, end="" if shown.endswith("\n") or not shown else "\n")
                print(f"--- {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.1f} s", flush=True)
                if rc != 0:
                    failed.append(f"{b.file}:{b.line}")
        finally:
            pipeline.stop()
            pipeline.drop_state()
    print(f"\n[doc-test] {len(runnable) - len(failed)} of {len(runnable)} blocks passed "
          f"in {time.monotonic() - t_all:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

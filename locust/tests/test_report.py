"""The report generator on a small recorded run (fixtures/tiny-run.json, written by a real
`locust/compare.py` run with tiny settings): every table, every plot and both answers."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

FIXTURE = ROOT / "locust/tests/fixtures/tiny-run.json"


def test_report_has_every_table_plot_and_answer(tmp_path):
    out = tmp_path / "timing-report.md"
    subprocess.run([sys.executable, str(ROOT / "locust/report.py"), "--run", str(FIXTURE), "--out", str(out),
                    "--html", ""], check=True)
    text = out.read_text()
    for heading in ("## Machine, versions, settings", "## Latency at fixed arrival rates",
                    "## Throughput at saturation", "## Where the time goes", "## Counts check",
                    "## Which producer took less time, and why", "## When gRPC fits, and when Wasm fits"):
        assert heading in text, heading
    # One latency row per rate and producer of the recorded run, with numbers in it.
    for rate in ("50", "100"):
        for producer in ("Wasm producer", "gRPC producer"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {rate} | {producer} |"))
            assert "—" not in row, row
    assert "| wrk -t1 -c32 | Wasm producer |" in text and "| wrk -t1 -c32 | gRPC producer |" in text
    assert "| Locust ceiling |" in text
    assert "- **Redis: passed for" in text and "- **MongoDB progress:" in text
    assert "The run took" in text and "make compare" in text
    for plot in ("timing-latency-vs-rate.png", "timing-saturation.png", "timing-stages.png"):
        data = (tmp_path / "img" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, plot
        assert f"img/{plot}" in text

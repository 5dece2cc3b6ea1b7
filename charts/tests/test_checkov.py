"""checkov's Kubernetes checks on the rendered chart (every value set in chart.VALUE_SETS).
A failed check passes only if charts/checkov-waivers.yaml waives it for that object, with
the reason; a waiver nothing fails any more fails too (drop it). checkov runs from its own
virtualenv (.cache/checkov-venv, made by scripts/bootstrap.sh from
requirements-checkov.txt): its pins (packaging<24, boto3) conflict with pytest 9 and
other tools in a shared environment. Missing, it fails the test rather than skipping."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import chart

CHECKOV = Path(os.environ.get("CHECKOV", chart.REPO / ".cache" / "checkov-venv" / "bin" / "checkov"))
WAIVERS = chart.REPO / "charts" / "checkov-waivers.yaml"


def checkov(folder, *extra):
    if not CHECKOV.is_file():
        pytest.fail("checkov is missing at %s: run scripts/bootstrap.sh (a virtualenv from "
                    "charts/tests/requirements-checkov.txt), or set CHECKOV" % CHECKOV)
    res = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "-o", "json",
                          "--skip-download", *extra], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode in (0, 1), "checkov exited %d:\n%s" % (res.returncode, res.stderr[-3000:])
    report = json.loads(res.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["resource_count"] > 0, "checkov read no objects"
    return report


def render(folder, *value_sets, extra=()):
    folder.mkdir()
    for name in value_sets:
        out = chart.helm("template", "urna", str(chart.CHART), "--kube-version", chart.KUBE_VERSION,
                         *chart.GENERATE, *chart.VALUE_SETS[name], *extra).stdout
        (folder / ("%s.yaml" % name)).write_text(out)
    return folder


def test_every_checkov_finding_is_fixed_or_waived(tmp_path):
    waivers = yaml.safe_load(WAIVERS.read_text())
    for check_id, w in waivers.items():
        assert w.get("reason", "").strip(), "%s: a waiver needs its reason" % check_id
    report = checkov(render(tmp_path / "rendered", *sorted(chart.VALUE_SETS)))
    failed, used = [], set()
    for f in report["results"]["failed_checks"]:
        w = waivers.get(f["check_id"])
        if w and (w["resources"] == "all" or f["resource"] in w["resources"]):
            used.add((f["check_id"], "all" if w["resources"] == "all" else f["resource"]))
        else:
            failed.append("%s %s: %s (%s)" % (f["check_id"], f["check_name"], f["resource"],
                                              f["file_path"].lstrip("/")))
    stale = ["%s: %s" % (check_id, r) for check_id, w in waivers.items()
             for r in (["all"] if w["resources"] == "all" else w["resources"]) if (check_id, r) not in used]
    print("checkov: %(passed)d passed, %(failed)d failed (all waived or listed below)" % report["summary"])
    assert not failed, "checkov findings neither fixed nor waived in %s:\n  %s" % (
        WAIVERS.name, "\n  ".join(sorted(set(failed))))
    assert not stale, "waivers in %s that nothing fails any more (drop them):\n  %s" % (
        WAIVERS.name, "\n  ".join(stale))


# Every image in values.yaml, and a digest for each (any 64 hex digits do for rendering).
IMAGE_VALUES = ["host.image", "grpc.client.image", "grpc.server.image", "consumer.image", "ui.api.image",
                "ui.web.image", "redis.image", "mongodb.image", "grafana.image"]


def test_digests_pin_every_image(tmp_path):
    # CKV_K8S_43 and CKV_K8S_15 are waived for tags; with image.digest set they pass.
    digests = []
    for i, key in enumerate(IMAGE_VALUES):
        digests += ["--set", "%s.digest=sha256:%064x" % (key, i + 1)]
    folder = render(tmp_path / "pinned", "options", extra=digests)
    objects = [d for d in yaml.safe_load_all((folder / "options.yaml").read_text()) if d]
    images = {c["image"] for _, spec in chart.pod_specs(objects)
              for c in spec.get("initContainers", []) + spec["containers"]}
    assert images and all("@sha256:" in i and ":" in i.split("@")[0].rsplit("/", 1)[1] for i in images), images
    report = checkov(folder, "--check", "CKV_K8S_43,CKV_K8S_15")
    assert report["summary"]["failed"] == 0, [(f["check_id"], f["resource"]) for f in
                                              report["results"]["failed_checks"]]

"""Finding the Strimzi CRDs on a user's clone (strimzi_crds.py), with a stand-in helm: a
named folder, the shared folder, the operator's chart pulled once into the cache, and a
registry out of reach failing fast with how to provide them."""

import os
import re
import subprocess
import sys
import time

import pytest
import yaml

import chart
import strimzi_crds


def write_crds(folder, kinds=strimzi_crds.KINDS, extra=("KafkaUser",)):
    """Stand-in CRDs: one file per kind (kinds not checked among them), as the chart ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(list(kinds) + list(extra)):
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "spec": {"group": "kafka.strimzi.io", "names": {"kind": kind}, "versions": []}}
        (folder / ("04%d-Crd-%s.yaml" % (i, kind.lower()))).write_text(yaml.safe_dump(crd))
    return folder


def fake_helm(tmp_path, pull):
    """A helm whose `pull` runs the shell snippet `pull` and logs its arguments."""
    path = tmp_path / "helm"
    path.write_text("#!/bin/sh\necho \"$@\" >> %s/helm.log\n%s\n" % (tmp_path, pull))
    path.chmod(0o755)
    return path


def calls(tmp_path):
    log = tmp_path / "helm.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_named_folder_is_used_and_a_wrong_one_refused(tmp_path):
    helm = fake_helm(tmp_path, "exit 1")
    named = write_crds(tmp_path / "named")
    assert strimzi_crds.find({"URNA_STRIMZI_CRDS": str(named)}, tmp_path / "shared", tmp_path / "cache", helm) == named
    with pytest.raises(strimzi_crds.Missing, match=r"URNA_STRIMZI_CRDS=.*empty holds no Strimzi 1\.2\.0 CRDs"):
        strimzi_crds.find({"URNA_STRIMZI_CRDS": str(tmp_path / "empty")}, named, tmp_path / "cache", helm)
    assert calls(tmp_path) == []


def test_the_shared_folder_is_used_where_it_exists(tmp_path):
    helm = fake_helm(tmp_path, "exit 1")
    shared = write_crds(tmp_path / "shared")
    assert strimzi_crds.find({}, shared, tmp_path / "cache", helm) == shared
    assert calls(tmp_path) == []


def test_the_operator_chart_is_pulled_into_the_cache_once(tmp_path):
    source = write_crds(tmp_path / "chart-crds")
    # `helm pull … --untar --untardir DIR` leaves DIR/strimzi-kafka-operator/crds/.
    helm = fake_helm(tmp_path, 'for a; do dir=$a; done\nmkdir -p "$dir/strimzi-kafka-operator"\n'
                               'cp -r %s "$dir/strimzi-kafka-operator/crds"' % source)
    cache = tmp_path / ".cache" / "strimzi-kafka-operator-1.2.0"
    for _ in range(2):
        found = strimzi_crds.find({}, tmp_path / "shared", cache, helm)
        assert found == cache / "strimzi-kafka-operator" / "crds"
        assert sorted(strimzi_crds.crds_in(found)) == sorted(strimzi_crds.KINDS)
    assert len(calls(tmp_path)) == 1
    args = calls(tmp_path)[0].split()
    assert args[:6] == ["pull", "oci://quay.io/strimzi-helm/strimzi-kafka-operator", "--version", "1.2.0",
                        "--untar", "--untardir"]
    assert os.listdir(cache.parent) == [cache.name]  # no half-done pull left beside it


@pytest.mark.parametrize("pull, why", [
    ("echo 'Error: dial tcp: lookup quay.io: no such host' >&2; exit 1", "Error: dial tcp: lookup quay.io: no such host"),
    ("sleep 30", "timed out after 1 s"),
])
def test_an_unreachable_registry_fails_fast_saying_how_to_provide_them(tmp_path, pull, why):
    helm = fake_helm(tmp_path, pull)
    cache = tmp_path / ".cache" / "strimzi-kafka-operator-1.2.0"
    start = time.monotonic()
    with pytest.raises(strimzi_crds.Missing) as e:
        strimzi_crds.find({}, tmp_path / "shared", cache, helm, timeout=1)
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert "helm pull oci://quay.io/strimzi-helm/strimzi-kafka-operator --version 1.2.0: %s" % why in message
    assert "Provide them: set URNA_STRIMZI_CRDS to a folder with the CRD files" in message
    assert os.listdir(cache.parent) == []


def test_missing_crds_are_one_clear_failure_not_a_collection_error(tmp_path):
    env = dict(os.environ, URNA_STRIMZI_CRDS=str(tmp_path / "none"), COLUMNS="1000")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                          "test_schemas.py"],
                         cwd=chart.TESTS, env=env, capture_output=True, text=True, timeout=300, check=False)
    summary = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?1 failed, 1 passed, 4 skipped in [0-9.]+s ?=*", summary), res.stdout
    assert "FAILED test_schemas.py::test_strimzi_crds_serve_only_v1 - Failed: URNA_STRIMZI_CRDS=%s holds no Strimzi 1.2.0 CRDs" \
        % (tmp_path / "none") in res.stdout, res.stdout
    assert "Traceback" not in res.stdout and "error" not in summary

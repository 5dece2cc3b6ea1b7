"""Rendering the chart offline: where helm is, `helm template` into parsed objects.

helm is installed by scripts/bootstrap.sh into .cache/go-tools/bin (HELM overrides).
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[1]
CHART = REPO / "charts" / "urna"
HELM = Path(os.environ.get("HELM", REPO / ".cache" / "go-tools" / "bin" / "helm"))
# The Kubernetes version objects are rendered for and validated against: GKE's regular
# release channel runs 1.33/1.34 at the time of writing.
KUBE_VERSION = os.environ.get("URNA_KUBE_VERSION", "1.34.0")
# The chart refuses to render without an image namespace (whose Docker Hub images to run):
# every render here names this one.
IMAGE_NAMESPACE = "example"
NAMESPACE = ["--set", "global.image.namespace=" + IMAGE_NAMESPACE]
# Value sets every check runs on: the defaults, GKE's, and the optional parts switched on.
VALUE_SETS = {
    "default": NAMESPACE,
    "gke": NAMESPACE + ["-f", str(CHART / "values-gke.yaml")],
    "options": NAMESPACE + ["--set", "consumer.keda.enabled=true", "--set", "ui.enabled=true"],
}


def helm(*args, check=True):
    if not HELM.is_file():
        pytest.fail("helm is missing at %s: run scripts/bootstrap.sh" % HELM)
    res = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode != 0:
        pytest.fail("helm %s exited %d:\n%s%s" % (" ".join(args), res.returncode, res.stdout, res.stderr))
    return res


class StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a key twice: PyYAML would keep the last one silently,
    while the API server's decoder refuses the whole object."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if dupes:
            raise yaml.constructor.ConstructorError(None, None, "duplicate keys %r" % dupes, node.start_mark)
        return super().construct_mapping(node, deep=deep)


# The chart generates passwords only when asked (test_secrets.py); the other tests let it.
GENERATE = ["--set", "secrets.generate=true"]


def template(*extra):
    """The objects `helm template` renders, as dicts (empty documents dropped); with
    IMAGE_NAMESPACE unless `extra` sets another."""
    out = helm("template", "urna", str(CHART), "--kube-version", KUBE_VERSION, *NAMESPACE, *GENERATE, *extra).stdout
    return [d for d in yaml.load_all(out, Loader=StrictLoader) if d]


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, "expected one %s/%s, found %d" % (kind, name, len(found))
    return found[0]


def pod_specs(objects):
    """(object, pod spec) of every workload that runs pods."""
    specs = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((o, o["spec"]["template"]["spec"]))
    return specs

"""Where the Strimzi 1.2.0 CRDs for the schema checks come from, the way a user has them:

1. the folder named by URNA_STRIMZI_CRDS (set: used, or a failure that says so);
2. ../shared/schemas/strimzi-1.2.0 beside the repository (this project's CI);
3. the crds/ folder of the Strimzi operator's own Helm chart of the pinned version, pulled
   with helm into the ignored .cache/ folder once (network needed the first time).

None of these files is ever in git: they are Strimzi's.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

VERSION = "1.2.0"
CHART_REF = "oci://quay.io/strimzi-helm/strimzi-kafka-operator"
KINDS = ("Kafka", "KafkaNodePool", "KafkaTopic")
# A registry that answers pulls a 1 MB chart in seconds; an unreachable one must not hang
# the suite.
PULL_TIMEOUT_S = 30


class Missing(Exception):
    """No CRDs found anywhere; the message says where it looked and how to provide them."""


def crds_in(folder):
    """{kind: CRD} of the wanted kinds in the folder's *.yaml files (any may hold several
    documents; the operator chart's crds/ also holds kinds not checked here)."""
    found = {}
    if not Path(folder).is_dir():
        return found
    for f in sorted(Path(folder).glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if (isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
                    and doc["spec"]["group"] == "kafka.strimzi.io" and doc["spec"]["names"]["kind"] in KINDS):
                found[doc["spec"]["names"]["kind"]] = doc
    return found


def _pull(helm, cache, timeout):
    """helm pull the operator chart into cache (atomically: a half-done pull leaves nothing).
    Returns None, or why it failed in one line."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=cache.parent))
    try:
        cmd = [str(helm), "pull", CHART_REF, "--version", VERSION, "--untar", "--untardir", str(tmp)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return "timed out after %d s" % timeout
        except OSError as e:
            return str(e)
        if res.returncode != 0:
            lines = (res.stderr or res.stdout).strip().splitlines()
            return lines[-1] if lines else "exit %d" % res.returncode
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def find(env, shared, cache, helm, timeout=PULL_TIMEOUT_S):
    """The folder holding the CRDs of KINDS, by the order in the module's docstring."""
    named = env.get("URNA_STRIMZI_CRDS")
    if named:
        if set(crds_in(named)) == set(KINDS):
            return Path(named)
        raise Missing("URNA_STRIMZI_CRDS=%s holds no Strimzi %s CRDs of kinds %s"
                      % (named, VERSION, ", ".join(KINDS)))
    tried = ["URNA_STRIMZI_CRDS: not set"]
    if set(crds_in(shared)) == set(KINDS):
        return Path(shared)
    tried.append("%s: no such folder or not all CRDs" % shared)
    pulled = Path(cache) / "strimzi-kafka-operator" / "crds"
    if set(crds_in(pulled)) != set(KINDS):
        why = _pull(helm, Path(cache), timeout) if Path(helm).is_file() else "helm missing at %s" % helm
        if why is None and set(crds_in(pulled)) != set(KINDS):
            why = "the pulled chart has no crds/ with %s" % ", ".join(KINDS)
        if why:
            tried.append("helm pull %s --version %s: %s" % (CHART_REF, VERSION, why))
            raise Missing(
                "Strimzi %s CRDs not found (tried: %s). Provide them: set URNA_STRIMZI_CRDS to a "
                "folder with the CRD files (the crds/ folder of the strimzi-kafka-operator chart %s, "
                "or install/cluster-operator/ of the Strimzi %s release), or rerun with access to "
                "quay.io, which pulls that chart into %s once."
                % (VERSION, "; ".join(tried), VERSION, VERSION, cache))
    return pulled

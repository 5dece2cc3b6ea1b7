"""Every rendered object is valid for the Kubernetes API: built-in kinds against
Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), the
Strimzi kinds against the openAPIV3Schema of Strimzi 1.2.0's CRDs. Nothing goes
unvalidated except kinds listed in UNCHECKED, with the reason."""

import copy
import functools
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

import chart
import strimzi_crds

# Where the Strimzi 1.2.0 CRDs are looked for (strimzi_crds.py): URNA_STRIMZI_CRDS, the
# shared folder beside the repository (this project's CI: ../shared/schemas/strimzi-1.2.0),
# the operator's Helm chart pulled into .cache/.
SHARED = Path(os.environ.get("URNA_SHARED_DIR", chart.REPO.parent / "shared")) / "schemas" / "strimzi-1.2.0"
CACHE = chart.REPO / ".cache" / ("strimzi-kafka-operator-" + strimzi_crds.VERSION)
# Kinds with no schema available offline; their facts are asserted in test_facts.py.
UNCHECKED = {("keda.sh/v1alpha1", "ScaledObject"): "KEDA's CRD is not shipped here"}


def _closed(schema):
    """The schema with unknown fields refused: the API server prunes fields a CRD does
    not declare, silently, so an unknown field here is a typo that would be lost."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


@functools.lru_cache(maxsize=None)
def strimzi():
    """({(apiVersion, kind): validator}, None), or ({}, why no CRDs were found). Looked up
    once, on first use: a failure is one test's, not the whole module's collection error."""
    try:
        folder = strimzi_crds.find(os.environ, SHARED, CACHE, chart.HELM)
    except strimzi_crds.Missing as e:
        return {}, str(e)
    validators = {}
    for kind, crd in strimzi_crds.crds_in(folder).items():
        group = crd["spec"]["group"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                schema = _closed(v["schema"]["openAPIV3Schema"])
                validators[("%s/%s" % (group, v["name"]), kind)] = jsonschema.Draft7Validator(schema)
    return validators, None


def strimzi_or_skip():
    validators, missing = strimzi()
    if missing:
        pytest.skip("no Strimzi CRDs: test_strimzi_crds_serve_only_v1 says why")
    return validators


def test_strimzi_crds_serve_only_v1():
    # The pin this chart is written for: Strimzi 1.2.0 refuses v1beta2.
    validators, missing = strimzi()
    if missing:
        pytest.fail(missing, pytrace=False)
    assert set(validators) == {("kafka.strimzi.io/v1", k) for k in ("Kafka", "KafkaNodePool", "KafkaTopic")}


def test_every_rendered_object_is_valid(rendered):
    values, objects = rendered
    validators, missing = strimzi()
    counts = {"kubernetes": 0, "strimzi": 0}
    errors = []
    for o in objects:
        key = (o["apiVersion"], o["kind"])
        name = "%s %s/%s" % (values, o["kind"], o["metadata"]["name"])
        if key in validators:
            problems = sorted(validators[key].iter_errors(o), key=lambda e: list(e.path))
            errors += ["%s: %s at %s" % (name, e.message, "/".join(map(str, e.path))) for e in problems]
            counts["strimzi"] += 1
        elif o["apiVersion"].startswith("kafka.strimzi.io/"):
            if missing:
                continue
            errors.append("%s: %s is not served by Strimzi 1.2.0" % (name, o["apiVersion"]))
        elif key in UNCHECKED:
            continue
        else:
            try:
                kubernetes_validate.validate(o, chart.KUBE_VERSION, strict=True)
                counts["kubernetes"] += 1
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                errors.append("%s: %s" % (name, e))
    assert not errors, "\n".join(errors)
    print("%s: %d objects valid against Kubernetes %s, %d against Strimzi 1.2.0"
          % (values, counts["kubernetes"], chart.KUBE_VERSION, counts["strimzi"]))
    if missing:
        pytest.skip("Kubernetes objects valid; Strimzi kinds unchecked (no CRDs: test_strimzi_crds_serve_only_v1)")
    assert counts["strimzi"] == 4  # Kafka, KafkaNodePool, 2 KafkaTopics
    assert counts["kubernetes"] > 30


def test_the_strimzi_check_catches_v1beta2_and_unknown_fields(default_objects):
    # The validators above must be able to fail: a v1beta2 object and a misspelt field.
    kafka = copy.deepcopy(chart.one(default_objects, "Kafka", "urna"))
    kafka["spec"]["kafka"]["listners"] = kafka["spec"]["kafka"].pop("listeners")
    validators = strimzi_or_skip()
    assert list(validators[("kafka.strimzi.io/v1", "Kafka")].iter_errors(kafka))
    assert ("kafka.strimzi.io/v1beta2", "Kafka") not in validators


def test_the_kubernetes_check_catches_unknown_fields(default_objects):
    deployment = copy.deepcopy(chart.one(default_objects, "Deployment", "urna-consumer"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, chart.KUBE_VERSION, strict=True)

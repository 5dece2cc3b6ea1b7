"""The Cloud Run manifests (cloudrun/): what can be checked without Google Cloud — the
images are ones `make push` publishes, the ports are the ones the images listen on, every
URNA_* variable is one the API reads, and passwords come from Secret Manager."""

import re
import subprocess

import yaml

import chart

CLOUDRUN = chart.REPO / "cloudrun"


def service(name):
    return yaml.safe_load((CLOUDRUN / ("%s.yaml" % name)).read_text())


def built_images():
    out = subprocess.run(["bash", str(chart.REPO / "scripts" / "images.sh"), "list"], capture_output=True,
                         text=True, check=True).stdout
    return {row.split("|")[0] for row in out.split()}


def container(svc):
    containers = svc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_services_are_knative_v1_with_pushed_images():
    for name, image in (("api", "urna-api"), ("web", "urna-web")):
        svc = service(name)
        assert (svc["apiVersion"], svc["kind"]) == ("serving.knative.dev/v1", "Service")
        ref = container(svc)["image"]
        assert ref == "docker.io/${DOCKERHUB_NAMESPACE}/%s:${IMAGE_TAG}" % image
        assert image in built_images()


def test_web_is_nginx_on_80_proxying_to_the_api():
    c = container(service("web"))
    assert c["ports"][0]["containerPort"] == 80
    env = {e["name"]: e["value"] for e in c["env"]}
    template = (chart.REPO / "ui/web/nginx/default.conf.template").read_text()
    assert set(env) <= set(re.findall(r"\$\{(\w+)\}", template))
    assert "URNA_API_UPSTREAM" in env


def test_api_reads_its_settings_and_secrets():
    c = container(service("api"))
    env = {e["name"]: e for e in c["env"]}
    listen = env["URNA_LISTEN"]["value"]
    assert listen == "0.0.0.0:%d" % c["ports"][0]["containerPort"]
    config = (chart.REPO / "ui/api/src/config.rs").read_text()
    fields = {"URNA_" + f.upper() for f in re.findall(r"pub ([a-z_0-9]+):", config)} | {"URNA_LOG_JSON"}
    assert set(env) <= fields, set(env) - fields
    for secret in ("URNA_REDIS_URL", "URNA_MONGO_URL"):
        assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]
    annotations = service("api")["spec"]["template"]["metadata"]["annotations"]
    assert "run.googleapis.com/network-interfaces" in annotations

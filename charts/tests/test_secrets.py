"""Credentials are never regenerated behind a running system's back: a render uses the
values given, or an existing Secret (`secrets.<store>.existingSecret`), or the live Secret
(`lookup`); it generates new ones only when asked (`secrets.generate=true`) and never on an
upgrade; anything else is refused (docs/deployment.md, "Credentials")."""

import base64

import chart

PASSWORDS = {
    "secrets.redis.passwords.consumer": "rc-0123456789abcdef",
    "secrets.redis.passwords.host": "rh-0123456789abcdef",
    "secrets.redis.passwords.grpc": "rg-0123456789abcdef",
    "secrets.redis.passwords.api": "ra-0123456789abcdef",
    "secrets.redis.passwords.grafana": "rf-0123456789abcdef",
    "secrets.mongodb.passwords.root": "mr-0123456789abcdef",
    "secrets.mongodb.passwords.consumer": "mc-0123456789abcdef",
    "secrets.mongodb.passwords.api": "ma-0123456789abcdef",
    "secrets.mongodb.keyfile": "k" * 756,
    "secrets.grafana.adminPassword": "ga-0123456789abcdef",
}
EXISTING = ["--set", "secrets.redis.existingSecret=my-redis", "--set", "secrets.mongodb.existingSecret=my-mongodb",
            "--set", "secrets.grafana.existingSecret=my-grafana"]


def sets(values):
    return [a for k, v in values.items() for a in ("--set-string", "%s=%s" % (k, v))]


def render(*args):
    """helm template without the tests' default `secrets.generate=true`."""
    return chart.helm("template", "urna", str(chart.CHART), "--kube-version", chart.KUBE_VERSION, *chart.NAMESPACE, *args,
                      check=False)


def test_a_render_with_no_credentials_is_refused():
    # No cluster to look up, no values, no existing Secret: a GitOps render would make new
    # passwords every time (and MongoDB keeps the first root password for ever).
    res = render()
    assert res.returncode != 0
    assert "secrets.redis: no passwords given" in res.stderr, res.stderr
    assert "secrets.generate=true" in res.stderr and "existingSecret" in res.stderr


def test_an_upgrade_never_generates_even_when_asked():
    res = render("--is-upgrade", "--set", "secrets.generate=true")
    assert res.returncode != 0
    assert "not generated on an upgrade" in res.stderr, res.stderr
    # With the credentials given, the same upgrade renders.
    assert render("--is-upgrade", *sets(PASSWORDS)).returncode == 0


def test_generated_only_on_install_when_asked():
    first = chart.template()  # the tests' default: secrets.generate=true, an install
    again = chart.template()
    data = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["data"] for s in chart.by_kind(first, "Secret")}
    root = base64.b64decode(data[("urna-data", "urna-mongodb")]["root-password"]).decode()
    assert len(root) == 32 and root.isalnum()
    # A copy holds the same value as urna-data's; two renders do not (hence the rule).
    for ns in ("urna-process", "urna-ingest", "urna-monitoring"):
        for key, value in data[(ns, "urna-redis")].items():
            assert value == data[("urna-data", "urna-redis")][key]
    assert {s["metadata"]["name"]: s["data"] for s in chart.by_kind(again, "Secret")} != \
        {s["metadata"]["name"]: s["data"] for s in chart.by_kind(first, "Secret")}


def test_given_passwords_render_the_same_secrets_every_time():
    args = sets(PASSWORDS)
    res = render(*args)
    assert res.returncode == 0, res.stderr
    assert render(*args).stdout == res.stdout
    objects = chart.template(*args)
    data = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["data"] for s in chart.by_kind(objects, "Secret")}

    def value(ns, name, key):
        return base64.b64decode(data[(ns, name)][key]).decode()

    assert value("urna-data", "urna-mongodb", "root-password") == PASSWORDS["secrets.mongodb.passwords.root"]
    assert value("urna-process", "urna-mongodb", "consumer-password") == PASSWORDS["secrets.mongodb.passwords.consumer"]
    assert value("urna-ingest", "urna-redis", "grpc-password") == PASSWORDS["secrets.redis.passwords.grpc"]
    assert value("urna-monitoring", "urna-grafana", "admin-password") == PASSWORDS["secrets.grafana.adminPassword"]
    assert value("urna-data", "urna-mongodb", "keyfile") == PASSWORDS["secrets.mongodb.keyfile"]


def test_a_password_that_would_break_the_connection_urls_is_refused():
    bad = dict(PASSWORDS, **{"secrets.redis.passwords.api": "a@b/c"})
    res = render(*sets(bad))
    assert res.returncode != 0 and "secrets.redis.passwords.api" in res.stderr, res.stderr


def test_existing_secrets_are_used_and_nothing_is_generated():
    for extra in ([], ["--set", "ui.enabled=true"]):
        res = render(*EXISTING, *extra)
        assert res.returncode == 0, res.stderr
        # Even on an upgrade: the chart reads nothing from them at render time.
        assert render("--is-upgrade", *EXISTING, *extra).returncode == 0
        objects = chart.template(*EXISTING, *extra)
        assert not chart.by_kind(objects, "Secret")
        names = set()
        for o, spec in chart.pod_specs(objects):
            for c in spec.get("initContainers", []) + spec["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] != "urna-host-admin":
                        names.add((o["metadata"]["namespace"], ref["name"], ref["key"]))
            for v in spec.get("volumes", []):
                if "secret" in v:
                    names |= {(o["metadata"]["namespace"], v["secret"]["secretName"], i["key"])
                              for i in v["secret"]["items"]}
        expected = {
            ("urna-data", "my-redis", k) for k in
            ("consumer-password", "host-password", "grpc-password", "api-password", "grafana-password")} | {
            ("urna-data", "my-mongodb", k) for k in ("root-password", "consumer-password", "api-password", "keyfile")} | {
            ("urna-process", "my-redis", "consumer-password"), ("urna-process", "my-mongodb", "consumer-password"),
            ("urna-ingest", "my-redis", "host-password"), ("urna-ingest", "my-redis", "grpc-password"),
            ("urna-monitoring", "my-redis", "grafana-password"), ("urna-monitoring", "my-grafana", "admin-password")}
        if extra:
            expected |= {("urna-monitoring", "my-redis", "api-password"), ("urna-monitoring", "my-mongodb", "api-password")}
        assert names == expected, sorted(names ^ expected)


def test_the_rule_is_written_down_in_values_and_docs():
    values = (chart.CHART / "values.yaml").read_text()
    docs = (chart.REPO / "docs" / "deployment.md").read_text()
    assert "existingSecret: \"\"" in values and "generate: false" in values
    assert "existingSecret" in docs and "--set secrets.generate=true" in docs

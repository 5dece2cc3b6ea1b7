"""The rendered facts the design asks for, asserted on what `helm template` produces."""

import re
from pathlib import Path

import chart

DESIGN_NAMESPACES = {"urna-ingest", "kafka", "urna-process", "urna-data", "urna-monitoring"}


def test_namespaces_are_the_designs(rendered):
    values, objects = rendered
    created = {o["metadata"]["name"] for o in chart.by_kind(objects, "Namespace")}
    # kafka is created by the Strimzi operator's install (docs/deployment.md), the rest here.
    assert created == DESIGN_NAMESPACES - {"kafka"}, values
    used = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert used == DESIGN_NAMESPACES, values
    where = {(o["kind"], o["metadata"]["name"]): o["metadata"]["namespace"] for o in objects
             if o["kind"] in ("Deployment", "StatefulSet", "Kafka", "KafkaNodePool")}
    assert where[("Deployment", "urna-host")] == "urna-ingest"
    assert where[("Deployment", "urna-grpc")] == "urna-ingest"
    assert where[("Deployment", "urna-consumer")] == "urna-process"
    assert where[("StatefulSet", "urna-redis")] == "urna-data"
    assert where[("StatefulSet", "urna-mongodb")] == "urna-data"
    assert where[("Deployment", "urna-grafana")] == "urna-monitoring"
    assert where[("Kafka", "urna")] == "kafka"


def test_consumer_is_sized_by_its_hpa_from_two_to_five_on_cpu(default_objects, gke_objects):
    for objects in (default_objects, gke_objects):
        # The HPA owns the count: a rendered replicas would reset it on every upgrade.
        assert "replicas" not in chart.one(objects, "Deployment", "urna-consumer")["spec"]
        hpa = chart.one(objects, "HorizontalPodAutoscaler", "urna-consumer")
        assert hpa["metadata"]["namespace"] == "urna-process"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "urna-consumer"}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert not chart.by_kind(objects, "ScaledObject")


def test_keda_replaces_the_hpa_on_lag_with_the_same_bounds():
    objects = chart.template("--set", "consumer.keda.enabled=true")
    assert not chart.by_kind(objects, "HorizontalPodAutoscaler")
    assert "replicas" not in chart.one(objects, "Deployment", "urna-consumer")["spec"]
    so = chart.one(objects, "ScaledObject", "urna-consumer")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 5)
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "urna-counter"
    assert trigger["metadata"]["topic"] == "votes"
    # KEDA must be let through Kafka's listener policy to read the lag.
    peers = chart.one(objects, "Kafka", "urna")["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in peers


def test_consumer_without_autoscaling_renders_its_replicas():
    objects = chart.template("--set", "consumer.autoscaling.enabled=false")
    assert chart.one(objects, "Deployment", "urna-consumer")["spec"]["replicas"] == 2
    assert not chart.by_kind(objects, "HorizontalPodAutoscaler") and not chart.by_kind(objects, "ScaledObject")
    # KEDA is an autoscaler: asking for it without autoscaling is refused, not ignored.
    res = chart.helm("template", "urna", str(chart.CHART), "--kube-version", chart.KUBE_VERSION, *chart.NAMESPACE, *chart.GENERATE,
                     "--set", "consumer.autoscaling.enabled=false", "--set", "consumer.keda.enabled=true", check=False)
    assert res.returncode == 1
    assert "consumer.keda.enabled needs consumer.autoscaling.enabled" in res.stderr, res.stderr


def test_grpc_producer_is_one_pod_with_client_and_server(rendered):
    _, objects = rendered
    pod = chart.one(objects, "Deployment", "urna-grpc")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"client", "server"}
    env = {e["name"]: e.get("value") for e in containers["client"]["env"]}
    # The client reaches the server inside the pod.
    assert env["URNA_GRPC_SERVER_URL"] == "http://127.0.0.1:50051"
    server_env = {e["name"]: e.get("value") for e in containers["server"]["env"]}
    assert server_env["URNA_GRPC_LISTEN"].endswith(":50051")
    # One delivery timeout for both: the client checks its deadline chain against it.
    assert env["URNA_KAFKA_DELIVERY_TIMEOUT_MS"] == server_env["URNA_KAFKA_DELIVERY_TIMEOUT_MS"]


def test_every_container_has_limits_requests_and_probes_and_runs_locked_down(rendered):
    values, objects = rendered
    problems = []
    for o, spec in chart.pod_specs(objects):
        pod_sc = spec.get("securityContext", {})
        where = "%s %s/%s" % (values, o["kind"], o["metadata"]["name"])
        if not pod_sc.get("runAsNonRoot") or pod_sc.get("runAsUser", 0) == 0:
            problems.append("%s: pod not non-root" % where)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append("%s: mounts a service account token it does not need" % where)
        containers = [(c, False) for c in spec.get("initContainers", [])] + [(c, True) for c in spec["containers"]]
        for c, long_running in containers:
            at = "%s container %s" % (where, c["name"])
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(kind, {})):
                    problems.append("%s: no cpu+memory %s" % (at, kind))
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append("%s: may escalate or keeps capabilities" % at)
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append("%s: root filesystem writable" % at)
            # Jobs and init containers run to completion: probes only on long-running ones.
            if long_running and o["kind"] != "Job":
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append("%s: no %s" % (at, probe))
    assert not problems, "\n".join(problems)


def test_probes_hit_the_services_real_endpoints(default_objects):
    def probes(deployment, container):
        pod = chart.one(default_objects, "Deployment", deployment)["spec"]["template"]["spec"]
        c = next(c for c in pod["containers"] if c["name"] == container)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        return c["livenessProbe"], c["readinessProbe"], ports, {e["name"]: e.get("value") for e in c["env"]}

    # HTTP services: /healthz for liveness, /readyz (Kafka reachable, sinks ok) for readiness,
    # on the port the service listens on (URNA_LISTEN).
    for deployment, container in (("urna-host", "host"), ("urna-grpc", "client"), ("urna-consumer", "consumer")):
        live, ready, ports, env = probes(deployment, container)
        assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
        assert env["URNA_LISTEN"] == "0.0.0.0:%d" % ports[live["httpGet"]["port"]]
    live, ready, ports, env = probes("urna-grpc", "server")
    assert live["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert env["URNA_METRICS_LISTEN"] == "0.0.0.0:%d" % ports["metrics"]
    assert ready["grpc"]["port"] == 50051


def test_topic_partitions_cover_the_most_consumers(rendered):
    values, objects = rendered
    hpa = chart.by_kind(objects, "HorizontalPodAutoscaler") or chart.by_kind(objects, "ScaledObject")
    spec = hpa[0]["spec"]
    most = spec.get("maxReplicas", spec.get("maxReplicaCount"))
    topics = {t["spec"]["topicName"]: t["spec"] for t in chart.by_kind(objects, "KafkaTopic")}
    assert set(topics) == {"votes", "votes.dlq"}
    assert topics["votes"]["partitions"] >= 6
    assert topics["votes"]["partitions"] >= most, values


def test_kafka_is_kraft_with_a_node_pool_and_the_services_use_its_bootstrap(rendered):
    values, objects = rendered
    pool = chart.by_kind(objects, "KafkaNodePool")[0]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == "urna"
    kafka = chart.one(objects, "Kafka", "urna")
    assert "zookeeper" not in kafka["spec"]
    assert kafka["spec"]["entityOperator"]["topicOperator"] is not None
    listener = kafka["spec"]["kafka"]["listeners"][0]
    bootstrap = "urna-kafka-bootstrap.kafka.svc.cluster.local:%d" % listener["port"]
    brokers = set()
    for _, spec in chart.pod_specs(objects):
        for c in spec["containers"]:
            brokers |= {e["value"] for e in c.get("env", []) if e["name"] == "URNA_KAFKA_BROKERS"}
    assert brokers == {bootstrap}, values
    # acks=all is only as strong as min.insync.replicas; replicated on GKE.
    if values == "gke":
        assert pool["spec"]["replicas"] == 3
        assert kafka["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
        assert {t["spec"]["replicas"] for t in chart.by_kind(objects, "KafkaTopic")} == {3}


def test_redis_persists_counters_and_offsets_with_aof(rendered):
    _, objects = rendered
    conf = chart.one(objects, "ConfigMap", "urna-redis")["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["appendonly"] == "yes"
    assert settings["maxmemory-policy"] == "noeviction"
    # Sized from the idempotency window × the peak keyed rate, and inside the container.
    assert settings["maxmemory"].endswith("mb"), settings["maxmemory"]
    maxmemory_mib = int(settings["maxmemory"][:-2])
    limit = chart.one(objects, "StatefulSet", "urna-redis")["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["memory"]
    assert limit.endswith("Mi") or limit.endswith("Gi"), limit
    limit_mib = int(limit[:-2]) * (1024 if limit.endswith("Gi") else 1)
    assert 300 < maxmemory_mib < limit_mib, (maxmemory_mib, limit_mib)
    sts = chart.one(objects, "StatefulSet", "urna-redis")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"] == settings["dir"] == "/data"


def test_mongodb_is_a_replica_set_the_consumer_connects_to_as_one(rendered):
    _, objects = rendered
    sts = chart.one(objects, "StatefulSet", "urna-mongodb")
    assert sts["spec"]["replicas"] == 3
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--replSet") + 1] == "rs0"
    pod = chart.one(objects, "Deployment", "urna-consumer")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    url = env["URNA_MONGO_URL"]["value"]
    assert "replicaSet=rs0" in url and url.count("urna-mongodb-") == 3
    # Passwords come from Secrets, never from values written into the pod spec.
    assert env["URNA_MONGO_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "urna-mongodb"
    assert env["URNA_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "urna-redis"


def test_secrets_share_one_value_across_namespaces(default_objects):
    values = {}
    for s in chart.by_kind(default_objects, "Secret"):
        for key, value in s["data"].items():
            values.setdefault((s["metadata"]["name"], key), set()).add(value)
    assert {k for k, v in values.items() if len(v) > 1} == set()
    assert len([k for k in values if k[0] in ("urna-redis", "urna-mongodb")]) == 9
    namespaces = {s["metadata"]["namespace"] for s in chart.by_kind(default_objects, "Secret")
                  if s["metadata"]["name"] == "urna-redis"}
    assert namespaces == {"urna-data", "urna-process", "urna-monitoring", "urna-ingest"}


def test_every_urna_variable_in_the_chart_is_one_the_services_read(rendered):
    # One setting, one name: a URNA_* variable the code does not know is a typo that
    # would silently fall back to a default.
    _, objects = rendered
    sources = "".join(p.read_text() for d in ("common", "host", "grpc", "consumer", "ui/api")
                      for p in (chart.REPO / d / "src").rglob("*.rs"))
    # Settings are serde fields read as URNA_<FIELD>; field names appear in the source.
    known = {"URNA_" + f.upper() for f in re.findall(r"pub ([a-z_0-9]+):", sources)}
    # Variables read by name (std::env::var("URNA_…")) and the web image's nginx template.
    known |= set(re.findall(r'"(URNA_[A-Z0-9_]+)"', sources))
    known |= set(re.findall(r"\$\{(URNA_[A-Z0-9_]+)\}", (chart.REPO / "ui/web/nginx/default.conf.template").read_text()))
    # Variables the chart itself defines to build others ($(VAR) expansion).
    helpers = {"URNA_REDIS_PASSWORD", "URNA_MONGO_PASSWORD"}
    unknown = set()
    for _, spec in chart.pod_specs(objects):
        for c in spec["containers"]:
            unknown |= {e["name"] for e in c.get("env", []) if e["name"].startswith("URNA_")} - known - helpers
    assert not unknown, sorted(unknown)


def test_host_runs_wasmedge_aot_by_default_and_wasmtime_by_value():
    def env(*args):
        pod = chart.one(chart.template(*args), "Deployment", "urna-host")["spec"]["template"]["spec"]
        return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    default = env()
    assert (default["URNA_WASM_RUNTIME"], default["URNA_WASMEDGE_RUN_MODE"]) == ("wasmedge", "aot")
    wasmtime = env("--set", "host.wasmRuntime=wasmtime")
    assert wasmtime["URNA_WASM_RUNTIME"] == "wasmtime" and "URNA_WASMEDGE_RUN_MODE" not in wasmtime


def test_host_replicas_share_redis_functions_and_the_admin_api_is_off_or_pod_only():
    def host(*args):
        objects = chart.template(*args)
        pod = chart.one(objects, "Deployment", "urna-host")["spec"]["template"]["spec"]["containers"][0]
        return objects, {e["name"]: e for e in pod["env"]}, {p["name"]: p["containerPort"] for p in pod["ports"]}
    _, env, ports = host()
    assert env["URNA_FUNCTION_STORE"]["value"] == "redis"
    assert "URNA_ADMIN_TOKEN" not in env and "admin" not in ports
    objects, env, ports = host("--set", "host.admin.tokenSecret=urna-host-admin")
    assert env["URNA_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "urna-host-admin", "key": "token"}
    assert env["URNA_ADMIN_LISTEN"]["value"] == "0.0.0.0:8091" and ports["admin"] == 8091
    # Never exposed: no Service or Ingress reaches the admin port.
    for svc in chart.by_kind(objects, "Service"):
        assert all(p.get("targetPort") != "admin" and p["port"] != 8091 for p in svc["spec"]["ports"]), svc["metadata"]
    for ing in chart.by_kind(objects, "Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] != {"number": 8091}


def test_images_come_from_values():
    objects = chart.template("--set", "global.image.namespace=someone", "--set", "global.image.tag=abc123",
                             "--set", "consumer.image.tag=pinned")
    images = {c["name"]: c["image"] for _, spec in chart.pod_specs(objects) for c in spec["containers"]}
    assert images["host"] == "docker.io/someone/urna-host:abc123"
    assert images["client"] == "docker.io/someone/urna-grpc-client:abc123"
    assert images["server"] == "docker.io/someone/urna-grpc-server:abc123"
    assert images["consumer"] == "docker.io/someone/urna-consumer:pinned"
    assert images["redis"].startswith("docker.io/redis:")


def test_network_policies_deny_by_default_and_open_only_the_flow(default_objects):
    nps = {(n["metadata"]["namespace"], n["metadata"]["name"]): n["spec"] for n in chart.by_kind(default_objects, "NetworkPolicy")}
    for ns in DESIGN_NAMESPACES - {"kafka"}:
        deny = nps[(ns, "default-deny")]
        assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
        assert "ingress" not in deny and "egress" not in deny

    def peers(rule):
        return {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for p in rule.get("from", rule.get("to", [])) if "namespaceSelector" in p and p["namespaceSelector"]}

    redis_in = nps[("urna-data", "redis")]["ingress"]
    assert set().union(*map(peers, redis_in)) == {"urna-process", "urna-ingest", "urna-monitoring"}
    mongo_in = nps[("urna-data", "mongodb")]["ingress"]
    assert set().union(*map(peers, mongo_in)) == {"urna-process"}
    # Producers talk to Kafka and Redis (the idempotency store) only, on their ports (plus
    # DNS); the consumer to Kafka, Redis, MongoDB.
    producers_out = nps[("urna-ingest", "producers")]["egress"]
    assert set().union(*map(peers, producers_out)) == {"kafka", "urna-data"}
    assert {(p, port["port"]) for rule in producers_out for p in peers(rule) for port in rule.get("ports", [])} == \
        {("kafka", 9092), ("urna-data", 6379)}
    assert set().union(*map(peers, nps[("urna-process", "consumer")]["egress"])) == {"kafka", "urna-data"}
    kafka_peers = chart.one(default_objects, "Kafka", "urna")["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in kafka_peers} == {"urna-ingest", "urna-process"}


def test_grafana_provisions_the_redis_datasource_and_the_dashboard(default_objects):
    prov = chart.one(default_objects, "ConfigMap", "urna-grafana-provisioning")["data"]
    import yaml
    ds = yaml.safe_load(prov["datasources.yaml"])["datasources"][0]
    assert ds["type"] == "redis-datasource" and ds["uid"] == "urna-redis"
    assert ds["url"] == "redis://urna-redis.urna-data.svc.cluster.local:6379"
    dash = chart.one(default_objects, "ConfigMap", "urna-grafana-dashboards")["data"]["urna-votes.json"]
    assert dash == (chart.CHART / "dashboards" / "urna-votes.json").read_text()
    pod = chart.one(default_objects, "Deployment", "urna-grafana")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GF_INSTALL_PLUGINS"].split()[0] == "redis-datasource"

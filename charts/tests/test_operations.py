"""What decides whether a release runs, survives and ends cleanly on a real cluster: the
Ingress GKE acts on, Grafana's writable paths, spreading over zones, DNS through the
policies, who owns the consumer's replicas, the image namespace, and volumes at uninstall."""

import chart

ZONE, HOST = "topology.kubernetes.io/zone", "kubernetes.io/hostname"
# NodeLocal DNSCache's listen address and the metadata server (Cloud DNS for GKE).
DNS_SERVERS = ["169.254.20.10/32", "169.254.169.254/32"]
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def test_gke_ingress_is_claimed_by_the_gce_annotation_not_a_class_name(gke_objects):
    # GKE's controller acts on the annotation only (kubernetes/ingress-gce#1891).
    ing = chart.one(gke_objects, "Ingress", "urna-producers")
    assert ing["metadata"]["annotations"] == {"kubernetes.io/ingress.class": "gce",
                                              "kubernetes.io/ingress.global-static-ip-name": "urna-producers"}
    assert "ingressClassName" not in ing["spec"]


def test_grafana_writes_only_where_a_volume_is_writable(rendered):
    values, objects = rendered
    pod = chart.one(objects, "Deployment", "urna-grafana")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # File logging would open /var/log/grafana on the read-only root, fatal since 8.3.
    assert env["GF_LOG_MODE"] == "console", values
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = sorted(m["mountPath"] for m in c["volumeMounts"]
                      if not m.get("readOnly") and "emptyDir" in volumes[m["name"]])
    assert writable == ["/tmp", "/var/lib/grafana"]
    # Every path Grafana (or its image's run.sh: plugins installed at start) writes.
    written = {k: env[k] for k in ("GF_PATHS_DATA", "GF_PATHS_PLUGINS", "GF_PATHS_LOGS")}
    assert written == {"GF_PATHS_DATA": "/var/lib/grafana", "GF_PATHS_PLUGINS": "/var/lib/grafana/plugins",
                       "GF_PATHS_LOGS": "/var/lib/grafana/log"}
    # Provisioning is only read: files mounted read-only under the image's /etc/grafana.
    assert env["GF_PATHS_PROVISIONING"] == "/etc/grafana/provisioning"
    assert {m["mountPath"] for m in c["volumeMounts"] if m["mountPath"].startswith("/etc/grafana/")} == {
        "/etc/grafana/provisioning/datasources/datasources.yaml",
        "/etc/grafana/provisioning/dashboards/dashboards.yaml"}
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"].startswith("/etc/grafana/"))


def spread(labels):
    return [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": labels}} for key in (ZONE, HOST)]


def test_gke_spreads_kafka_and_mongodb_one_per_zone_and_node(gke_objects):
    kafka = chart.one(gke_objects, "Kafka", "urna")
    # broker.rack from the node's zone: a partition's 3 replicas land in 3 zones.
    assert kafka["spec"]["kafka"]["rack"] == {"topologyKey": ZONE}
    pool = chart.one(gke_objects, "KafkaNodePool", "dual")
    assert pool["spec"]["replicas"] == 3
    assert pool["spec"]["template"]["pod"]["topologySpreadConstraints"] == spread(
        {"strimzi.io/cluster": "urna", "strimzi.io/pool-name": "dual"})
    mongo = chart.one(gke_objects, "StatefulSet", "urna-mongodb")
    assert mongo["spec"]["replicas"] == 3
    assert mongo["spec"]["template"]["spec"]["topologySpreadConstraints"] == spread(
        {"app.kubernetes.io/name": "urna-mongodb", "app.kubernetes.io/instance": "urna"})


def test_default_values_need_no_zone_labels(default_objects):
    # A cluster whose nodes carry no zone label (kind, minikube) could place no pod.
    assert "rack" not in chart.one(default_objects, "Kafka", "urna")["spec"]["kafka"]
    assert "template" not in chart.one(default_objects, "KafkaNodePool", "dual")["spec"]
    assert "topologySpreadConstraints" not in chart.one(default_objects, "StatefulSet", "urna-mongodb")[
        "spec"]["template"]["spec"]


def dns_rules(objects):
    """{policy name: its egress rules on port 53}, for every policy that allows egress."""
    return {n["metadata"]["name"]: [r for r in n["spec"]["egress"] if {"protocol": "UDP", "port": 53} in r["ports"]]
            for n in chart.by_kind(objects, "NetworkPolicy") if n["spec"].get("egress")}


def test_dns_egress_reaches_kube_dns_nodelocal_dnscache_and_cloud_dns(rendered):
    values, objects = rendered
    rules = dns_rules(objects)
    names = {"producers", "consumer", "mongodb", "mongodb-init", "grafana"} | ({"ui"} if values == "options" else set())
    assert set(rules) == names, values
    want = [{"to": [{"namespaceSelector": {}}] + [{"ipBlock": {"cidr": c}} for c in DNS_SERVERS], "ports": DNS_PORTS}]
    assert {name: r for name, r in rules.items() if r != want} == {}, values


def test_dns_servers_outside_the_pods_are_a_value():
    rules = dns_rules(chart.template("--set", "networkPolicies.dnsCidrs={10.0.0.10/32}"))
    assert {name: r[0]["to"] for name, r in rules.items()} == {
        name: [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "10.0.0.10/32"}}] for name in rules}


def test_a_render_without_an_image_namespace_fails_with_the_reason():
    # Without it the pods would pull someone else's <registry>/urna/* images.
    res = chart.helm("template", "urna", str(chart.CHART), "--kube-version", chart.KUBE_VERSION, *chart.GENERATE,
                     check=False)
    assert res.returncode == 1
    assert "global.image.namespace is required" in res.stderr, res.stderr


def test_uninstall_deletes_every_volume_by_default(rendered):
    values, objects = rendered
    pool = chart.one(objects, "KafkaNodePool", "dual")
    assert [v["deleteClaim"] for v in pool["spec"]["storage"]["volumes"]] == [True], values
    for name in ("urna-redis", "urna-mongodb"):
        sts = chart.one(objects, "StatefulSet", name)
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}, \
            (values, name)


def test_volumes_are_kept_by_value():
    objects = chart.template("--set", "kafka.nodePool.storage.deleteClaim=false",
                             "--set", "redis.storage.deleteClaim=false", "--set", "mongodb.storage.deleteClaim=false")
    assert [v["deleteClaim"] for v in chart.one(objects, "KafkaNodePool", "dual")["spec"]["storage"]["volumes"]] == [False]
    for name in ("urna-redis", "urna-mongodb"):
        assert chart.one(objects, "StatefulSet", name)["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain", "whenScaled": "Retain"}

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

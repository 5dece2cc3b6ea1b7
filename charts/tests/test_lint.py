"""helm lint (strict: warnings fail) with every value set."""

import pytest

import chart


@pytest.mark.parametrize("values", sorted(chart.VALUE_SETS))
def test_helm_lint_is_clean(values):
    res = chart.helm("lint", "--strict", "--kube-version", chart.KUBE_VERSION, str(chart.CHART),
                     *chart.GENERATE, *chart.VALUE_SETS[values], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout
    # lint only logs a template's `fail` and renders on: none may fire.
    assert "Fail:" not in res.stdout + res.stderr


def test_a_consumer_ceiling_above_the_partitions_is_refused():
    # More members than partitions would idle: the chart refuses to render it.
    res = chart.helm("template", "urna", str(chart.CHART), "--kube-version", chart.KUBE_VERSION, *chart.NAMESPACE, *chart.GENERATE,
                     "--set", "consumer.autoscaling.maxReplicas=7", check=False)
    assert res.returncode != 0
    assert "exceeds the votes topic's partitions" in res.stderr


def test_rendered_yaml_with_a_key_twice_is_refused():
    # chart.template parses with this loader; it must catch what PyYAML would hide.
    import yaml
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        list(yaml.load_all("metadata:\n  labels:\n    a: x\n    a: y\n", Loader=chart.StrictLoader))

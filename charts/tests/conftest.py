"""Fixtures of the chart tests: the chart rendered once per value set."""

import pytest

import chart


@pytest.fixture(scope="session", params=sorted(chart.VALUE_SETS))
def rendered(request):
    """(value set name, rendered objects), for each value set in chart.VALUE_SETS."""
    return request.param, chart.template(*chart.VALUE_SETS[request.param])


@pytest.fixture(scope="session")
def default_objects():
    return chart.template()


@pytest.fixture(scope="session")
def gke_objects():
    return chart.template(*chart.VALUE_SETS["gke"])

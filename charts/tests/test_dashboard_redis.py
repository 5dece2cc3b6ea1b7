"""The Grafana dashboard against the real consumer: votes go through both real producers
into Kafka, the real consumer counts them into Redis, and each panel's Redis command —
parsed out of the provisioned dashboard JSON, not restated here — must return exactly the
numbers those votes make. A panel reading a key the consumer does not write (or writes
differently) fails here, so the dashboard and the consumer cannot drift apart.

Needs the local stack (scripts/test.sh starts it) and the debug binaries + vote module.
"""

import json
import re
import tomllib
import urllib.error
import urllib.request
from collections import Counter

import pytest

import chart
from pipeline import Pipeline, poll

DASHBOARD = chart.CHART / "dashboards" / "urna-votes.json"
VOTES = 40


def redis_targets(dashboard):
    """(panel, target) for every Redis query of the dashboard, rows included."""
    found = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))
            for t in panel.get("targets", []):
                ds = t.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == "redis-datasource":
                    found.append((panel, t))

    walk(dashboard["panels"])
    return found


def ballot_albums():
    ballot = tomllib.loads((chart.REPO / "config" / "ballot.toml").read_text())
    return [(b["name"], a["title"], a["year"]) for b in ballot["band"] for a in b["albums"]]


def the_votes():
    """VOTES votes over the ballot's albums with uneven counts, ranks 1–10, some names in
    other case and years as strings (the producers normalise), 3:1 Wasm to gRPC."""
    albums = ballot_albums()
    pattern = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    votes = []
    for i in range(VOTES):
        band, album, year = albums[pattern[i % len(pattern)] % len(albums)]
        vote = {"name": band.upper() if i % 5 == 0 else band, "album": album,
                "year": str(year) if i % 2 else year, "rank": 1 + (i * 3) % 10}
        votes.append(("grpc" if i % 4 == 3 else "wasm", vote, (band, album)))
    return votes


def post(base, vote):
    req = urllib.request.Request(base + "/votes", data=json.dumps(vote).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def expected_keys(votes, group, end_offsets):
    """What the design's Redis keys must hold after these votes, by key name: the counters,
    and the group's next offset per partition — Kafka's end offset for every partition
    that received a vote (all were counted; none was dead-lettered)."""
    albums, bands, ranks, sources = Counter(), Counter(), Counter(), Counter()
    for source, vote, (band, album) in votes:
        albums["%s|%s" % (band, album)] += 1
        bands[band] += 1
        ranks["%s|%s" % (band, album)] += vote["rank"]
        sources[source] += 1
    return {
        "votes:total": len(votes),
        "votes:bands": dict(bands),
        "votes:albums": dict(albums),
        "votes:rank_sum": dict(ranks),
        "votes:sources": dict(sources),
        "votes:offsets:%s" % group: {str(p): end for p, end in end_offsets.items() if end > 0},
    }


def interpolate(key, dashboard, values):
    """A key with Grafana's dashboard variables ($name / ${name}) replaced by the test's
    values; every variable must be one the dashboard defines."""
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}

    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in defined, "%r uses $%s, which the dashboard does not define" % (key, name)
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, key)


def as_numbers(reply):
    if isinstance(reply, dict):
        return {k: int(v) for k, v in reply.items()}
    return int(reply)


@pytest.fixture(scope="module")
def counted():
    pipeline = Pipeline()
    try:
        pipeline.start()
        votes = the_votes()
        for source, vote, _ in votes:
            status, body = post(pipeline.wasm if source == "wasm" else pipeline.grpc, vote)
            assert status == 202, "%s %r → %d %s" % (source, vote, status, body)
        # Wait until the consumer has counted every vote (polling, not sleeping).
        poll("all %d votes counted" % VOTES,
             lambda: pipeline._alive() and pipeline.redis.get("votes:total") == str(VOTES), 120)
        ends = pipeline.end_offsets()
        assert sum(ends.values()) == VOTES
        yield pipeline.redis, expected_keys(votes, pipeline.group, ends), {"group": pipeline.group}
    except BaseException:
        print(pipeline.logs())
        raise
    finally:
        pipeline.stop()


def test_the_dashboard_has_several_panel_types_on_redis():
    targets = redis_targets(json.loads(DASHBOARD.read_text()))
    types = {panel["type"] for panel, _ in targets}
    assert {"timeseries", "barchart"} <= types and len(types) >= 3, types
    # The time series of totals by producer samples the hash while streaming.
    ts = [t for p, t in targets if p["type"] == "timeseries"]
    assert ts and all(t.get("streaming") for t in ts)


def test_the_group_variable_defaults_to_the_charts_consumer_group():
    # The dashboard's $group must name the group the chart deploys, or its progress
    # panel reads an offsets hash nobody writes.
    import yaml
    dashboard = json.loads(DASHBOARD.read_text())
    group = next(v for v in dashboard["templating"]["list"] if v["name"] == "group")
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    assert group["current"]["value"] == group["query"] == values["consumer"]["env"]["URNA_GROUP_ID"]


def test_each_panel_command_returns_the_counted_numbers(counted):
    r, expected, variables = counted
    dashboard = json.loads(DASHBOARD.read_text())
    targets = redis_targets(dashboard)
    assert targets
    for panel, target in targets:
        key = interpolate(target["keyName"], dashboard, variables)
        args = [target["command"], key] + ([target["field"]] if target.get("field") else [])
        assert key in expected, "panel %r reads %r, a key the consumer does not write" % (panel["title"], key)
        got = as_numbers(r.execute_command(*args))
        assert got == expected[key], "panel %r: %s returned %r, expected %r" % (panel["title"], " ".join(args), got, expected[key])

"""Only the access each service needs: every service authenticates to Redis and MongoDB
as its own user, with the commands and keys it uses (read from its code: see the lists
below) and nothing more; no run-time pod gets MongoDB's root password; Redis' `default`
user answers PING only (the Redis pod's own probes)."""

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

import chart

PREFIX = "votes"
HOST = "urna-redis.urna-data.svc.cluster.local:6379"

# What each service runs on Redis, found in its code (run through the real server below):
# - consumer: consumer/src/redis_sink/ (apply.lua, skip.lua by EVALSHA, SCRIPT LOAD on
#   NOSCRIPT; HGETALL/EXISTS for its state; DEL, UNLINK, SCAN for `reset`), PING;
# - host: common/src/idempotency.rs (BEGIN/SETTLE scripts, INFO for its gauges) and the
#   function store host/src/functions/ (COMMIT script, GET/SET/DEL/SMEMBERS/LRANGE,
#   HINCRBY/HGETALL/HKEYS/HDEL on outcomes);
# - grpc (the client): common/src/idempotency.rs only;
# - api: ui/api/src/results.rs (GET + HGETALL in MULTI/EXEC), functions.rs (SMEMBERS, GET,
#   HGETALL), PING;
# - grafana: the dashboard's panels (GET, HGETALL) and the data source's health check (PING).
# Every redis-rs client also sends CLIENT SETINFO on connect (its answer is ignored).
CONNECT = {"+ping", "+client|setinfo"}
SCRIPTS = {"+evalsha", "+script|load"}
REDIS_USERS = {
    "default": {"on", "nopass", "resetkeys", "resetchannels", "-@all", "+ping"},
    "consumer": {"resetkeys", "resetchannels", "~votes:*", "-@all"} | CONNECT | SCRIPTS | {
        "+hgetall", "+exists", "+del", "+unlink", "+scan",
        # inside apply.lua / skip.lua
        "+type", "+zscore", "+hmget", "+hget", "+get", "+hset", "+incrby", "+hincrby", "+zadd",
        "+zremrangebyscore"},
    "host": {"resetkeys", "resetchannels", "~votes:idempotency:request:*", "~votes:functions:*",
             "-@all"} | CONNECT | SCRIPTS | {
        "+info", "+time", "+get", "+set", "+del", "+sadd", "+incr", "+lpush", "+ltrim", "+smembers",
        "+lrange", "+hincrby", "+hgetall", "+hkeys", "+hdel"},
    "grpc": {"resetkeys", "resetchannels", "~votes:idempotency:request:*", "-@all"} | CONNECT | SCRIPTS
    | {"+info", "+time", "+get", "+set", "+del"},
    "api": {"resetkeys", "resetchannels", "%R~votes:*", "-@all"} | CONNECT | {"+multi", "+exec", "+get",
                                                                               "+hgetall", "+smembers"},
    "grafana": {"resetkeys", "resetchannels", "%R~votes:*", "-@all", "+ping", "+get", "+hgetall"},
}
# container → (Redis user, MongoDB user or None)
SERVICES = {
    ("Deployment", "urna-consumer", "consumer"): ("consumer", "consumer"),
    ("Deployment", "urna-host", "host"): ("host", None),
    ("Deployment", "urna-grpc", "client"): ("grpc", None),
    ("Deployment", "urna-ui", "api"): ("api", "api"),
}
MONGO_USERS = [
    {"user": "consumer", "roles": [{"role": "readWrite", "db": "urna"}]},
    {"user": "api", "roles": [{"role": "read", "db": "urna"}]},
]


def acl_rules(objects):
    """The Redis users of the rendered ACL rules: name → set of rules (as the Redis pod's
    init container completes them: `on` and the password's hash added)."""
    text = chart.one(objects, "ConfigMap", "urna-redis")["data"]["users.acl"]
    users = {}
    for line in text.splitlines():
        if line.startswith("user "):
            _, name, *rules = line.split()
            assert name not in users, name
            users[name] = set(rules)
    return users


def containers(objects):
    for o, spec in chart.pod_specs(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield o, c


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def test_redis_users_have_exactly_the_rules_their_code_needs(rendered):
    values, objects = rendered
    users = acl_rules(objects)
    for name, expected in REDIS_USERS.items():
        assert users.get(name) == expected, (values, name, sorted(users.get(name, ())), sorted(expected))
    assert set(users) == set(REDIS_USERS), values
    conf = chart.one(objects, "ConfigMap", "urna-redis")["data"]["redis.conf"]
    assert "aclfile /acl/users.acl" in conf.splitlines()
    sts = chart.one(objects, "StatefulSet", "urna-redis")["spec"]["template"]["spec"]
    redis = sts["containers"][0]
    # No requirepass: it would give `default` a password and all commands.
    settings = [line.split()[0] for line in conf.splitlines() if line and not line.startswith("#")]
    assert "--requirepass" not in redis["command"] and "requirepass" not in settings
    assert "REDISCLI_AUTH" not in env_of(redis) and "REDIS_PASSWORD" not in env_of(redis)


def test_each_service_connects_to_redis_and_mongodb_as_its_own_user(rendered):
    values, objects = rendered
    seen = set()
    for o, c in containers(objects):
        key = (o["kind"], o["metadata"]["name"], c["name"])
        env = env_of(c)
        if key not in SERVICES:
            assert not {"URNA_REDIS_URL", "URNA_MONGO_URL"} & set(env), key
            continue
        seen.add(key)
        redis_user, mongo_user = SERVICES[key]
        assert env["URNA_REDIS_URL"]["value"] == "redis://%s:$(URNA_REDIS_PASSWORD)@%s" % (redis_user, HOST), key
        assert env["URNA_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
            {"name": "urna-redis", "key": "%s-password" % redis_user}, key
        if mongo_user is None:
            assert "URNA_MONGO_URL" not in env and "URNA_MONGO_PASSWORD" not in env, key
            continue
        url = env["URNA_MONGO_URL"]["value"]
        assert url.startswith("mongodb://%s:$(URNA_MONGO_PASSWORD)@urna-mongodb-0." % mongo_user), key
        assert url.endswith("/?replicaSet=rs0&authSource=admin"), key
        assert env["URNA_MONGO_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
            {"name": "urna-mongodb", "key": "%s-password" % mongo_user}, key
    expected = {k for k in SERVICES if values == "options" or k[1] != "urna-ui"}
    assert seen == expected, values


def test_grafana_reads_redis_as_its_acl_user(rendered):
    _, objects = rendered
    import yaml
    prov = chart.one(objects, "ConfigMap", "urna-grafana-provisioning")["data"]
    ds = yaml.safe_load(prov["datasources.yaml"])["datasources"][0]
    assert ds["jsonData"]["acl"] is True and ds["jsonData"]["user"] == "grafana"
    assert ds["secureJsonData"] == {"password": "$URNA_REDIS_PASSWORD"}
    pod = chart.one(objects, "Deployment", "urna-grafana")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["URNA_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "urna-redis", "key": "grafana-password"}


def secret_refs(spec):
    """(secret, key) pairs a pod spec reads: env, envFrom (key None) and volumes (key None
    for a whole Secret)."""
    refs = set()
    for c in spec.get("initContainers", []) + spec["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                refs.add((e["secretRef"]["name"], None))
    for v in spec.get("volumes", []):
        if "secret" in v:
            items = v["secret"].get("items")
            for key in [i["key"] for i in items] if items else [None]:
                refs.add((v["secret"]["secretName"], key))
    return refs


def test_only_mongodb_and_its_hook_jobs_read_the_root_password(rendered):
    values, objects = rendered
    readers = {(o["kind"], o["metadata"]["name"]) for o, spec in chart.pod_specs(objects)
               if {("urna-mongodb", "root-password"), ("urna-mongodb", None)} & secret_refs(spec)}
    assert readers == {("StatefulSet", "urna-mongodb"), ("Job", "urna-mongodb-rs-init"),
                       ("Job", "urna-mongodb-users")}, values
    # ... and only urna-data holds it.
    for s in chart.by_kind(objects, "Secret"):
        if "root-password" in s["data"]:
            assert (s["metadata"]["name"], s["metadata"]["namespace"]) == ("urna-mongodb", "urna-data")


def test_each_namespace_holds_only_its_pods_credentials(rendered):
    values, objects = rendered
    keys = {(s["metadata"]["namespace"], s["metadata"]["name"]): set(s["data"])
            for s in chart.by_kind(objects, "Secret")}
    expected = {
        ("urna-data", "urna-redis"): {"consumer-password", "host-password", "grpc-password", "api-password",
                                      "grafana-password"},
        ("urna-data", "urna-mongodb"): {"root-password", "consumer-password", "api-password", "keyfile"},
        ("urna-process", "urna-redis"): {"consumer-password"},
        ("urna-process", "urna-mongodb"): {"consumer-password"},
        ("urna-ingest", "urna-redis"): {"host-password", "grpc-password"},
        ("urna-monitoring", "urna-redis"): {"grafana-password"},
        ("urna-monitoring", "urna-grafana"): {"admin-password"},
    }
    if values == "options":  # the API in the cluster (ui.namespace: urna-monitoring)
        expected[("urna-monitoring", "urna-redis")] |= {"api-password"}
        expected[("urna-monitoring", "urna-mongodb")] = {"api-password"}
    assert keys == expected, values
    # Every key a pod reads is there, in its own namespace.
    for o, spec in chart.pod_specs(objects):
        for name, key in secret_refs(spec):
            held = keys.get((o["metadata"]["namespace"], name))
            if name.startswith("urna-") and name != "urna-host-admin":
                assert held is not None and (key is None or key in held), (values, o["metadata"]["name"], name, key)


def test_mongodb_users_are_created_or_updated_by_a_hook_after_the_replica_set(rendered):
    values, objects = rendered
    job = chart.one(objects, "Job", "urna-mongodb-users")
    rs_init = chart.one(objects, "Job", "urna-mongodb-rs-init")
    ann = job["metadata"]["annotations"]
    # On install and on every upgrade: the image's init scripts only run on an empty volume.
    assert ann["helm.sh/hook"] == "post-install,post-upgrade"
    assert int(ann["helm.sh/hook-weight"]) > int(rs_init["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == "urna-data"
    # The label MongoDB's NetworkPolicy admits (as the replica set's init Job).
    assert job["spec"]["template"]["metadata"]["labels"]["urna.io/role"] == "mongodb-init"
    c = pod["containers"][0]
    env = env_of(c)
    assert json.loads(env["MONGO_USERS"]["value"]) == MONGO_USERS, values
    for u in MONGO_USERS:
        assert env["PASSWORD_%s" % u["user"]]["valueFrom"]["secretKeyRef"] == \
            {"name": "urna-mongodb", "key": "%s-password" % u["user"]}
    script = c["command"][-1]
    assert "createUser" in script and "updateUser" in script and "getUser" in script


def test_cloud_run_api_connects_as_the_read_only_users():
    doc = (chart.REPO / "docs" / "deployment.md").read_text()
    assert "printf 'redis://api:%s@%s:6379'" in doc
    assert "printf 'mongodb://api:%s@%s:27017/?directConnection=true&authSource=admin'" in doc
    for store in ("redis", "mongodb"):
        assert "get secret urna-%s -o jsonpath='{.data.api-password}'" % store in doc
    assert ".data.password}" not in doc


# The live check: the rendered rules, completed by the Redis pod's own init script, loaded
# into a real redis-server; each user runs its commands on its keys (ACL DRYRUN) and is
# refused the rest.
ALLOWED = {
    "consumer": [["evalsha", "x", "1", "votes:offsets:urna-counter"], ["script", "load", "return 1"],
                 ["hgetall", "votes:owner"], ["exists", "votes:total"], ["del", "votes:total"],
                 ["unlink", "votes:idempotency:request:ab"], ["scan", "0", "MATCH", "votes:offsets:*"],
                 ["ping"], ["type", "votes:bands"], ["zscore", "votes:idempotency:3", "k"],
                 ["hmget", "votes:owner", "group"], ["hget", "votes:offsets:g", "0"], ["get", "votes:total"],
                 ["hset", "votes:owner", "group", "g"], ["incrby", "votes:total", "1"],
                 ["hincrby", "votes:albums", "a|b", "1"], ["zadd", "votes:idempotency:3", "1", "k"],
                 ["zremrangebyscore", "votes:idempotency:3", "-inf", "(1"]],
    "host": [["evalsha", "x", "1", "votes:idempotency:request:ab"], ["script", "load", "return 1"],
             ["time"], ["info", "keyspace", "memory"], ["get", "votes:idempotency:request:ab"],
             ["set", "votes:idempotency:request:ab", "v", "PXAT", "1"], ["del", "votes:idempotency:request:ab"],
             ["evalsha", "x", "4", "votes:functions:state:default", "votes:functions:names",
              "votes:functions:revision", "votes:functions:audit"],
             ["sadd", "votes:functions:names", "default"], ["incr", "votes:functions:revision"],
             ["lpush", "votes:functions:audit", "{}"], ["ltrim", "votes:functions:audit", "0", "999"],
             ["smembers", "votes:functions:names"], ["lrange", "votes:functions:audit", "0", "9"],
             ["set", "votes:functions:module:default:ab", "x"], ["get", "votes:functions:module:default:ab"],
             ["hincrby", "votes:functions:outcomes:default", "v|accepted", "1"],
             ["hgetall", "votes:functions:outcomes:default"], ["hkeys", "votes:functions:outcomes:default"],
             ["hdel", "votes:functions:outcomes:default", "v|accepted"], ["ping"]],
    "grpc": [["evalsha", "x", "1", "votes:idempotency:request:ab"], ["script", "load", "return 1"],
             ["time"], ["info", "keyspace", "memory"], ["get", "votes:idempotency:request:ab"],
             ["set", "votes:idempotency:request:ab", "v", "KEEPTTL"], ["del", "votes:idempotency:request:ab"],
             ["ping"]],
    "api": [["get", "votes:total"], ["hgetall", "votes:bands"], ["multi"], ["exec"],
            ["smembers", "votes:functions:names"], ["get", "votes:functions:state:default"],
            ["hgetall", "votes:functions:outcomes:default"], ["ping"]],
    "grafana": [["get", "votes:total"], ["hgetall", "votes:offsets:urna-counter"], ["ping"]],
    "default": [["ping"]],
}
REFUSED = {
    "consumer": [["flushall"], ["config", "get", "*"], ["keys", "*"], ["eval", "return 1", "0"],
                 ["get", "other:x"], ["acl", "list"], ["script", "flush"], ["info"]],
    "host": [["hincrby", "votes:albums", "a|b", "1"], ["get", "votes:total"], ["flushall"],
             ["del", "votes:offsets:urna-counter"], ["eval", "return 1", "0"], ["keys", "*"]],
    "grpc": [["get", "votes:functions:names"], ["set", "votes:total", "1"], ["flushdb"],
             ["smembers", "votes:functions:names"]],
    "api": [["set", "votes:total", "1"], ["del", "votes:total"], ["hset", "votes:bands", "a", "1"],
            ["keys", "*"], ["get", "other:x"], ["evalsha", "x", "0"], ["config", "get", "*"]],
    "grafana": [["set", "votes:total", "1"], ["hincrby", "votes:bands", "a", "1"], ["keys", "*"],
                ["smembers", "votes:functions:names"], ["config", "get", "*"], ["info"]],
    "default": [["get", "votes:total"], ["info"], ["keys", "*"], ["config", "get", "*"], ["set", "a", "b"]],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_redis_lets_each_user_run_its_commands_and_refuses_the_rest(default_objects, tmp_path):
    # The local stack's redis-server (stack/install.sh puts it there); a missing one is a
    # failure, not a skip: these rules are what keeps the internet-facing API read-only.
    server = shutil.which("redis-server")
    if not server:
        pytest.fail("no redis-server on PATH: run stack/install.sh (or make stack-up)")
    import redis
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    major_minor = tuple(int(x) for x in re.search(r"v=(\d+)\.(\d+)", version).groups())
    assert major_minor >= (7, 0), "ACL DRYRUN and %%R~ need Redis 7, found %s" % version
    # The Redis pod's init container script, run on the rendered rules and fake passwords.
    sts = chart.one(default_objects, "StatefulSet", "urna-redis")["spec"]["template"]["spec"]
    init = next(c for c in sts["initContainers"] if c["name"] == "acl")
    script = init["command"][-1]
    rules = chart.one(default_objects, "ConfigMap", "urna-redis")["data"]["users.acl"]
    if major_minor < (7, 2):  # CLIENT SETINFO is 7.2's; the chart runs 7.4
        rules = rules.replace(" +client|setinfo", "")
    (tmp_path / "rules").write_text(rules)
    (tmp_path / "passwords").mkdir()
    (tmp_path / "acl").mkdir()
    passwords = {u: "pw-%s-0123456789" % u for u in REDIS_USERS if u != "default"}
    for u, p in passwords.items():
        (tmp_path / "passwords" / ("%s-password" % u)).write_text(p)
    script = (script.replace("/etc/redis/users.acl", str(tmp_path / "rules"))
              .replace("/passwords/", str(tmp_path / "passwords") + "/")
              .replace("/acl/", str(tmp_path / "acl") + "/"))
    subprocess.run(["sh", "-c", script], check=True)
    acl = (tmp_path / "acl" / "users.acl").read_text()
    assert "pw-" not in acl  # hashes only
    # A test-only admin to ask ACL DRYRUN.
    (tmp_path / "acl" / "users.acl").write_text(acl + "user testadmin on >admin ~* &* +@all\n")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path),
                             "--aclfile", str(tmp_path / "acl" / "users.acl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = redis.Redis(port=port, username="testadmin", password="admin", decode_responses=True)
        for _ in range(50):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        problems = []
        for user, cmds in ALLOWED.items():
            for cmd in cmds:
                answer = admin.execute_command("ACL", "DRYRUN", user, *cmd)
                if answer != "OK":
                    problems.append("%s refused %s: %s" % (user, cmd, answer))
        for user, cmds in REFUSED.items():
            for cmd in cmds:
                answer = admin.execute_command("ACL", "DRYRUN", user, *cmd)
                if answer == "OK":
                    problems.append("%s allowed %s" % (user, cmd))
        assert not problems, "\n".join(problems)
        # Each service's password logs it in; the default user needs none, for PING only.
        for u, p in passwords.items():
            assert redis.Redis(port=port, username=u, password=p).ping()
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, username=u, password="wrong").ping()
        anonymous = redis.Redis(port=port)
        assert anonymous.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            anonymous.get("votes:total")
        # The services' real scripts, run as their users: the commands inside a script are
        # checked against the caller's rules too.
        def client(user):
            return redis.Redis(port=port, username=user, password=passwords[user], decode_responses=True)

        def rust_script(path, name):
            return re.search(r'const %s: &str = r"(.*?)";' % name, (chart.REPO / path).read_text(), re.S).group(1)

        consumer = client("consumer")
        apply = consumer.register_script((chart.REPO / "consumer/src/redis_sink/apply.lua").read_text())
        keys = ["votes:offsets:urna-counter", "votes:total", "votes:bands", "votes:albums", "votes:rank_sum",
                "votes:sources", "votes:owner", "votes:idempotency:0"]
        batch = ["urna-counter", "votes", 1, 0, 2, 0, "A", "A|X", 5, "grpc", "k1", 100, 1, "A", "A|X", 3, "wasm", "", 0]
        assert apply(keys=keys, args=batch) == ["0", "applied:2:0"]
        assert apply(keys=keys, args=batch) == ["0", "applied:0:0"]  # a replay changes nothing
        skip = consumer.register_script((chart.REPO / "consumer/src/redis_sink/skip.lua").read_text())
        assert skip(keys=keys[:1] + keys[6:7], args=["urna-counter", "votes", 0, 2, 5]) == 1
        api = client("api")
        pipe = api.pipeline(transaction=True)
        pipe.get("votes:total").hgetall("votes:sources")
        assert pipe.execute() == ["2", {"grpc": "1", "wasm": "1"}]
        assert client("grafana").hgetall("votes:offsets:urna-counter") == {"0": "5"}
        begin = rust_script("common/src/idempotency.rs", "BEGIN")
        entry = "votes:idempotency:request:ab"
        for user in ("grpc", "host"):
            c = client(user)
            reply = c.register_script(begin)(keys=[entry], args=["fp", "t", "id-1", 1, 2 ** 45, 8000])
            assert reply[0] in ("new", "in_flight"), (user, reply)
            assert c.register_script(rust_script("common/src/idempotency.rs", "SETTLE"))(
                keys=[entry], args=["pending", "gone", "", 0]) in (0, 1)
        commit = client("host").register_script(rust_script("host/src/functions/store.rs", "COMMIT"))
        fkeys = ["votes:functions:state:default", "votes:functions:names", "votes:functions:revision",
                 "votes:functions:audit"]
        assert commit(keys=fkeys, args=["", "{}", "default", "{}", 999]) == 1
        assert client("api").smembers("votes:functions:names") == {"default"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)

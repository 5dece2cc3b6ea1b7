"""The images' Dockerfiles, checked for structure (no engine here can build them):
every image scripts/images.sh builds has a multi-stage Dockerfile on tagged, versioned
bases, runs as a non-root user, and is an image the chart actually deploys."""

import functools
import json
import os
import re
import shlex
import subprocess

import pytest

import chart

# Images whose final stage runs as root, with the reason (reported, not hidden).
ROOT_EXCEPTIONS = {
    "urna-web": "the official nginx image binds port 80 as root and drops its workers to "
                "the nginx user; in the cluster the chart runs it as uid 10001 on port 8000",
}


def images():
    out = subprocess.run(["bash", str(chart.REPO / "scripts" / "images.sh"), "list"], capture_output=True,
                         text=True, check=True).stdout
    return [dict(zip(("name", "dockerfile", "context", "target"), row.split("|"))) for row in out.split()]


def stages(text):
    """Stages of a Dockerfile: name, base image (global ARGs substituted), USER lines, and
    every instruction as (WORD, rest), continuation lines joined. Comment lines go first,
    as Docker drops them even inside a continued RUN."""
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    args, result = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            result.append({"name": name, "base": base, "users": [], "from": rest, "lines": []})
        elif result:
            result[-1]["lines"].append((word, rest))
            if word == "USER":
                result[-1]["users"].append(rest)
    return result


def final_user(all_stages, target):
    by_name = {s["name"]: s for s in all_stages if s["name"]}
    stage = by_name[target] if target != "-" else all_stages[-1]
    while True:
        if stage["users"]:
            return stage["users"][-1]
        if stage["base"] not in by_name:
            return None  # the base image's user: root for the ones used here
        stage = by_name[stage["base"]]


@pytest.mark.parametrize("image", images(), ids=lambda i: i["name"])
def test_dockerfile_is_multi_stage_pinned_and_non_root(image):
    path = chart.REPO / image["dockerfile"]
    all_stages = stages(path.read_text())
    assert len(all_stages) >= 2, "%s: single stage (build tools would ship)" % path
    names = {s["name"] for s in all_stages}
    for s in all_stages:
        if s["base"] in names:
            continue
        assert "$" not in s["base"], "%s: unresolved ARG in %s" % (path, s["base"])
        repo, _, tag = s["base"].partition("@")[0].rpartition(":")
        assert repo and tag and tag != "latest", "%s: base %s has no pinned tag" % (path, s["base"])
        assert re.search(r"\d", tag) or "@sha256:" in s["base"] or tag.split("-")[0] in ("bookworm", "trixie"), \
            "%s: base %s is not pinned to a version" % (path, s["base"])
    user = final_user(all_stages, image["target"])
    if image["name"] in ROOT_EXCEPTIONS:
        assert user is None, "%s now sets USER: drop its exception" % image["name"]
    else:
        assert user and user.split(":")[0] not in ("0", "root"), "%s runs as root" % image["name"]


def test_the_chart_deploys_the_images_that_are_built():
    built = {i["name"] for i in images()}
    objects = chart.template("--set", "ui.enabled=true")
    used = {c["image"].rsplit("/", 1)[1].split(":")[0] for _, spec in chart.pod_specs(objects)
            for c in spec["containers"] if "/%s/" % chart.IMAGE_NAMESPACE in c["image"]}
    assert used == built


# --- what each image's final stage runs, against the container the chart declares -------

def global_args(text):
    """The ARGs before the first FROM, with their defaults."""
    found = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            break
        if word.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            found[name] = default
    return found


def chain(all_stages, target):
    """The target stage and the stages it is built FROM, the target first."""
    by_name = {s["name"]: s for s in all_stages if s["name"]}
    stage = by_name[target] if target != "-" else all_stages[-1]
    result = [stage]
    while stage["base"] in by_name:
        stage = by_name[stage["base"]]
        result.append(stage)
    return result


def final_config(image):
    """ENTRYPOINT, EXPOSE, USER, ENV and COPY destinations the image's target stage ends
    with (inherited from its parent stages; a third-party base's own are not known)."""
    all_stages = stages((chart.REPO / image["dockerfile"]).read_text())
    cfg = {"entrypoint": None, "expose": set(), "user": None, "env": {}, "copied": set()}
    for stage in reversed(chain(all_stages, image["target"])):
        for word, rest in stage["lines"]:
            if word == "ENTRYPOINT":
                cfg["entrypoint"] = json.loads(rest)
            elif word == "EXPOSE":
                cfg["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
            elif word == "USER":
                cfg["user"] = rest
            elif word == "ENV":
                tokens = shlex.split(rest)
                if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
                    tokens = ["%s=%s" % (tokens[0], " ".join(tokens[1:]))]
                cfg["env"].update(t.split("=", 1) for t in tokens)
            elif word == "COPY":
                cfg["copied"].add(shlex.split(rest)[-1])
    return cfg


# Variables that set a listening address (host:port), and PORT, which overrides
# URNA_LISTEN's port in urna-api and is nginx's port in urna-web.
LISTEN_VARS = ("URNA_LISTEN", "URNA_GRPC_LISTEN", "URNA_METRICS_LISTEN", "URNA_ADMIN_LISTEN")


def listen_ports(env):
    ports = {k: int(env[k].rsplit(":", 1)[1]) for k in LISTEN_VARS if env.get(k)}
    if env.get("PORT"):
        ports["URNA_LISTEN"] = int(env["PORT"])
    return set(ports.values())


# An image default the chart sets to another value on purpose, with the reason.
ENV_OVERRIDES = {
    ("urna-web", "PORT"): "nginx runs non-root in the cluster and cannot bind 80: 8000",
}


@functools.lru_cache(maxsize=None)
def deployed_containers():
    """(image name, pod spec, container) for every urna container the chart renders, with
    the optional parts on (the UI pod, the host's admin port)."""
    objects = chart.template("--set", "ui.enabled=true", "--set", "host.admin.tokenSecret=urna-admin")
    found = []
    for _, spec in chart.pod_specs(objects):
        for c in spec["containers"]:
            if "/%s/" % chart.IMAGE_NAMESPACE in c["image"]:
                found.append((c["image"].rsplit("/", 1)[1].split(":")[0].split("@")[0], spec, c))
    return found


@pytest.mark.parametrize("image", images(), ids=lambda i: i["name"])
def test_the_final_stage_runs_what_the_chart_container_expects(image):
    cfg = final_config(image)
    containers = [(spec, c) for name, spec, c in deployed_containers() if name == image["name"]]
    assert containers, "%s: no container in the chart runs it" % image["name"]
    problems = []
    # The image's own defaults agree with each other: its listeners are what it EXPOSEs.
    if listen_ports(cfg["env"]) != cfg["expose"]:
        problems.append("image listens on %s (ENV) but EXPOSEs %s"
                        % (sorted(listen_ports(cfg["env"])), sorted(cfg["expose"])))
    if cfg["entrypoint"]:
        if cfg["entrypoint"][0] not in cfg["copied"]:
            problems.append("ENTRYPOINT %s is not a file the stage copies in" % cfg["entrypoint"][0])
    for spec, c in containers:
        where = "container %s" % c["name"]
        # Binary: the chart leaves the image's ENTRYPOINT in place (or names the same one).
        if "command" in c and (not cfg["entrypoint"] or c["command"][:1] != cfg["entrypoint"][:1]):
            problems.append("%s: command %s replaces ENTRYPOINT %s" % (where, c["command"], cfg["entrypoint"]))
        # Env: the chart's literal values over the image's defaults.
        chart_env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        env = {**cfg["env"], **chart_env}
        for k in sorted(set(chart_env) & set(cfg["env"])):
            if chart_env[k] != cfg["env"][k] and (image["name"], k) not in ENV_OVERRIDES:
                problems.append("%s: %s=%s, the image's default is %s" % (where, k, chart_env[k], cfg["env"][k]))
        # Ports: what the process listens on, given that env, is what the pod declares.
        declared = {p["containerPort"] for p in c.get("ports", [])}
        if listen_ports(env) != declared:
            problems.append("%s: listens on %s but declares containerPorts %s"
                            % (where, sorted(listen_ports(env)), sorted(declared)))
        # User: the uid (and gid) the kubelet runs it as is the image's USER.
        sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
        run_as = (sc.get("runAsUser"), sc.get("runAsGroup"))
        if image["name"] in ROOT_EXCEPTIONS:
            if not sc.get("runAsNonRoot") or not run_as[0]:
                problems.append("%s: root in the image and not made non-root by the chart" % where)
        else:
            uid, _, gid = (cfg["user"] or "").partition(":")
            if not uid.isdigit():
                problems.append("USER %r is not numeric (runAsNonRoot cannot verify a name)" % cfg["user"])
            elif (str(run_as[0]), str(run_as[1])) != (uid, gid or uid):
                problems.append("%s: runs as %s:%s, the image's USER is %s"
                                % (where, run_as[0], run_as[1], cfg["user"]))
    assert not problems, "%s (%s):\n  %s" % (image["name"], image["dockerfile"], "\n  ".join(problems))


# --- built for the nodes' architecture ----------------------------------------------------

def run_images(tmp_path, engine, cmd, **env):
    """scripts/images.sh with a stand-in engine that records its arguments: what would run."""
    log = tmp_path / "calls"
    fake = tmp_path / engine
    fake.write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s"\n' % log)
    fake.chmod(0o755)
    env = {**os.environ, "CONTAINER_ENGINE": str(fake), "DOCKERHUB_NAMESPACE": "ns",
           "IMAGE_TAG": "0123456789ab", "IMAGE_PLATFORMS": None, **env}
    res = subprocess.run(["bash", str(chart.REPO / "scripts" / "images.sh"), cmd], capture_output=True,
                         text=True, env={k: v for k, v in env.items() if v is not None}, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_images_are_built_for_amd64_nodes_by_default(tmp_path, engine):
    # From an arm64 laptop too: the build names the nodes' platform, not the builder's.
    calls = run_images(tmp_path, engine, "build")
    assert len(calls) == len(images())
    for call in calls:
        assert "--platform linux/amd64 " in call, call
        if engine == "docker":
            assert call.startswith("buildx build ") and call.split()[-2] == "--load", call


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_multi_arch_images_are_one_manifest_per_name(tmp_path, engine):
    both = "linux/amd64,linux/arm64"
    ref = "docker.io/ns/urna-host:0123456789ab"
    built = run_images(tmp_path, engine, "build", IMAGE_PLATFORMS=both)
    pushed = run_images(tmp_path, engine, "push", IMAGE_PLATFORMS=both)[len(built):]
    first = [c for c in built if "build " in c][0]
    assert "--platform %s " % both in first, first
    if engine == "docker":
        # The local image store holds one platform: buildx pushes the list itself.
        assert pushed[0].startswith("buildx build ") and "--platform %s " % both in pushed[0], pushed[0]
        assert "-t %s --push " % ref in pushed[0], pushed[0]
    else:
        assert first.endswith("--manifest %s ." % ref), first
        assert pushed[0] == "manifest push --all %s docker://%s" % (ref, ref), pushed[0]


# WasmEdge 0.17.1's Linux release assets, as wasmedge-sys 0.21.1's build.rs pins them.
WASMEDGE_ASSETS = {
    "amd64": ("manylinux_2_28_x86_64", "27a1abec072ddf45b40e2e81e33c1e5fe9b241f31fd1bbf0182f05097489a07a"),
    "arm64": ("manylinux_2_28_aarch64", "6d7762429083e787ccbddf629868bb59de4325ccdcc31d9f7bd240adcdd9fe9d"),
}


def wasmedge_fetch(targetarch):
    """Runs the host image's WasmEdge download step for BuildKit's TARGETARCH, with curl,
    sha256sum and the file commands stubbed: (exit code, the URL fetched, the checksum line)."""
    text = (chart.REPO / "host" / "Dockerfile").read_text()
    stage = [s for s in stages(text) if s["name"] == "wasmedge"][0]
    run = [rest for word, rest in stage["lines"] if word == "RUN" and "curl" in rest and "WasmEdge" in rest]
    assert len(run) == 1, "host/Dockerfile: one RUN downloads WasmEdge"
    declared = {rest.split("=")[0] for word, rest in stage["lines"] if word == "ARG"}
    assert "TARGETARCH" in declared, "the wasmedge stage does not declare ARG TARGETARCH"
    stubs = ('out=""; curl() { echo "url ${@: -1}"; }; sha256sum() { echo "sum $(cat)"; }; '
             'tar() { :; }; mkdir() { :; }; cp() { :; }; ls() { :; }; rm() { :; }; ')
    env = {"PATH": os.environ["PATH"], "TARGETARCH": targetarch,
           **{k: v for k, v in global_args(text).items() if k.startswith("WASMEDGE_")}}
    res = subprocess.run(["bash", "-o", "pipefail", "-c", stubs + run[0]], capture_output=True, text=True,
                         env=env, check=False)
    lines = res.stdout.splitlines()
    url = [l[4:] for l in lines if l.startswith("url ")]
    total = [l[4:] for l in lines if l.startswith("sum ")]
    return res.returncode, url[0] if url else None, total[0] if total else None


@pytest.mark.parametrize("arch", sorted(WASMEDGE_ASSETS))
def test_the_host_image_fetches_wasmedge_for_the_target_arch(arch):
    suffix, sha = WASMEDGE_ASSETS[arch]
    rc, url, checksum = wasmedge_fetch(arch)
    assert rc == 0
    assert url == "https://github.com/WasmEdge/WasmEdge/releases/download/0.17.1/WasmEdge-0.17.1-%s.tar.gz" % suffix
    assert checksum.split()[0] == sha


def test_the_host_image_refuses_an_arch_without_a_wasmedge_build():
    rc, url, _ = wasmedge_fetch("riscv64")
    assert rc != 0 and url is None


# --- the Wasm target and AOT code ---------------------------------------------------------

@pytest.mark.parametrize("image", images(), ids=lambda i: i["name"])
def test_every_rust_target_is_added_before_a_build_for_it(image):
    # rust-toolchain.toml names wasm32-wasip1, but in an image whose toolchain is already
    # installed rustup does not add the file's targets: the Dockerfile must.
    for stage in stages((chart.REPO / image["dockerfile"]).read_text()):
        added = set()
        for word, rest in stage["lines"]:
            if word != "RUN":
                continue
            for m in re.finditer(r"rustup target add ((?:[\w-]+ ?)+)", rest):
                added |= set(m.group(1).split())
            for target in re.findall(r"cargo build[^;&]*--target[ =]([\w-]+)", rest):
                assert target in added, "%s: stage %s builds for %s before `rustup target add %s`" % (
                    image["dockerfile"], stage["name"], target, target)


def test_no_image_ships_native_code_for_the_build_machine():
    # `wasmedge compile` emits code for the build machine's CPU unless --generic-binary:
    # another node's CPU may lack its instructions.
    for path in sorted({i["dockerfile"] for i in images()}):
        for stage in stages((chart.REPO / path).read_text()):
            for word, rest in stage["lines"]:
                if word == "RUN" and "wasmedge compile" in rest:
                    assert "--generic-binary" in rest, "%s: wasmedge compile without --generic-binary" % path


def test_the_host_compiles_modules_on_its_node_where_it_can_write():
    # The host strips any native code a module carries and AOT-compiles the plain module
    # itself at load (host/src/runtime/wasmedge.rs, into std::env::temp_dir()), so the image
    # ships plain Wasm and the pod needs a writable /tmp under its read-only root.
    source = (chart.REPO / "host" / "src" / "runtime" / "wasmedge.rs").read_text()
    assert "strip_native_code" in source and "std::env::temp_dir()" in source
    cfg = final_config([i for i in images() if i["name"] == "urna-host"][0])
    assert cfg["env"]["URNA_WASM_RUNTIME"] == "wasmedge" and "TMPDIR" not in cfg["env"]
    [(spec, c)] = [(spec, c) for name, spec, c in deployed_containers() if name == "urna-host"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["URNA_WASM_RUNTIME"] == "wasmedge" and env["URNA_WASMEDGE_RUN_MODE"] == "aot"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in [v for v in spec["volumes"] if v["name"] == tmp[0]["name"]][0]
    # ... and the chart's own words say so.
    for path in ("charts/README.md", "charts/urna/values.yaml"):
        text = (chart.REPO / path).read_text()
        assert not re.search(r"AOT-compiled at (image )?build", text), "%s: says modules are AOT-compiled at build" % path

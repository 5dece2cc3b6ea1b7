"""The images' Dockerfiles, checked for structure (no engine here can build them):
every image scripts/images.sh builds has a multi-stage Dockerfile on tagged, versioned
bases, runs as a non-root user, and is an image the chart actually deploys."""

import re
import subprocess

import pytest

import chart

# Images whose final stage runs as root, with the reason (reported, not hidden).
ROOT_EXCEPTIONS = {
    "urna-web": "the official nginx image binds port 80 as root and drops its workers to "
                "the nginx user; in the cluster the chart runs it as uid 101 on port 8000",
}


def images():
    out = subprocess.run(["bash", str(chart.REPO / "scripts" / "images.sh"), "list"], capture_output=True,
                         text=True, check=True).stdout
    return [dict(zip(("name", "dockerfile", "context", "target"), row.split("|"))) for row in out.split()]


def stages(text):
    """Stages of a Dockerfile: name, base image (global ARGs substituted), USER lines."""
    text = re.sub(r"\\\n", " ", text)
    args, result = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            result.append({"name": name, "base": base, "users": []})
        elif word == "USER" and result:
            result[-1]["users"].append(rest.strip())
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

#!/usr/bin/env bash
# Installs what building and testing urna needs on a fresh Debian/Ubuntu machine.
# Idempotent: a second run installs nothing. Uses sudo only when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: compilers for librdkafka (built from source by rdkafka-sys),
# the Redis server for the local stack, and tools the scripts use.
apt_packages=(build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev
  libsasl2-dev redis-server redis-tools curl ca-certificates procps)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: $1 is required ($2)" >&2; exit 1; }; }
need cargo "install Rust with rustup"
need rustup "install Rust with rustup"
need node "install Node.js 20"
need java "install a JDK 17+"
need mvn "install Maven"
need go "install Go 1.22+"
need python3 "install Python 3.11+"

# rust-toolchain.toml pins the compiler and the wasm32-wasip1 target; rustup fetches both.
rustup show active-toolchain >/dev/null
rustup target list --installed | grep -q '^wasm32-wasip1$' || rustup target add wasm32-wasip1

# cargo-machete for `make lint` (unused dependencies), into the project's cache.
machete_root=.cache/cargo-tools
if [ ! -x "$machete_root/bin/cargo-machete" ]; then
  echo "bootstrap: installing cargo-machete into $machete_root"
  cargo install cargo-machete --locked --root "$machete_root"
fi

# helm for the chart checks (charts/tests), built from its Go module into the cache; the
# stamp records the version so a changed pin reinstalls.
helm_version=v3.19.0
helm_root=.cache/go-tools
if [ "$(cat "$helm_root/helm.version" 2>/dev/null)" != "$helm_version" ] || [ ! -x "$helm_root/bin/helm" ]; then
  echo "bootstrap: installing helm $helm_version into $helm_root"
  mkdir -p "$helm_root/bin"
  GOBIN="$PWD/$helm_root/bin" go install "helm.sh/helm/v3/cmd/helm@$helm_version"
  echo "$helm_version" > "$helm_root/helm.version"
fi

# checkov for the chart checks (charts/tests/test_checkov.py), in its own virtualenv: its
# pins (packaging<24, boto3, ...) would break pytest and other tools in a shared one.
checkov_venv=.cache/checkov-venv
checkov_req=charts/tests/requirements-checkov.txt
if ! cmp -s "$checkov_req" "$checkov_venv/requirements.txt" || [ ! -x "$checkov_venv/bin/checkov" ]; then
  echo "bootstrap: installing checkov into $checkov_venv"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --disable-pip-version-check -r "$checkov_req"
  cp "$checkov_req" "$checkov_venv/requirements.txt"
fi

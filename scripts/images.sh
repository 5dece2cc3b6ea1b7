#!/usr/bin/env bash
# Builds and pushes urna's container images (what `make images` / `make push` run).
#
#   scripts/images.sh build|push|list
#
# Images are docker.io/$DOCKERHUB_NAMESPACE/<name>:$IMAGE_TAG — the chart's
# global.image.namespace and global.image.tag. The engine is docker or podman, whichever
# is installed (CONTAINER_ENGINE overrides).
#
# Built for the nodes, not for this machine: IMAGE_PLATFORMS (default linux/amd64, GKE's
# usual nodes) goes to `docker buildx build --platform` / `podman build --platform`, so an
# arm64 laptop still builds images an amd64 node runs. Several, comma-separated
# (linux/amd64,linux/arm64), make one multi-arch image per name: docker's `push` then
# builds and pushes it in one step (from buildx's cache; needs a docker-container builder,
# `docker buildx create --use`), podman pushes a manifest list. A platform other than the
# builder's runs under QEMU emulation: it works, but the Rust build is many times slower.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | Dockerfile | build context | target stage ("-": the last)
IMAGES=(
  "urna-host|host/Dockerfile|.|-"
  "urna-grpc-server|grpc/Dockerfile|.|server"
  "urna-grpc-client|grpc/Dockerfile|.|client"
  "urna-consumer|consumer/Dockerfile|.|-"
  "urna-api|ui/api/Dockerfile|.|-"
  "urna-web|ui/web/Dockerfile|ui/web|-"
)

cmd=${1:-}
if [[ $cmd == list ]]; then
  printf '%s\n' "${IMAGES[@]}"
  exit 0
fi
[[ $cmd == build || $cmd == push ]] || { echo "usage: $0 build|push|list" >&2; exit 2; }

engine=${CONTAINER_ENGINE:-$(command -v docker || command -v podman || true)}
[[ -n $engine ]] || { echo "images: neither docker nor podman is installed" >&2; exit 1; }
namespace=${DOCKERHUB_NAMESPACE:?set DOCKERHUB_NAMESPACE to your Docker Hub user or organisation}
tag=${IMAGE_TAG:-$(git rev-parse --short=12 HEAD)}
registry=${IMAGE_REGISTRY:-docker.io}
platforms=${IMAGE_PLATFORMS:-linux/amd64}
multi=0
[[ $platforms == *,* ]] && multi=1
kind=docker
[[ $(basename "$engine") == podman* ]] && kind=podman

for row in "${IMAGES[@]}"; do
  IFS='|' read -r name dockerfile context target <<<"$row"
  ref="$registry/$namespace/$name:$tag"
  build=(-f "$dockerfile" --platform "$platforms")
  [[ $target == - ]] || build+=(--target "$target")
  if [[ $kind == docker ]]; then
    # The local image store holds one platform: a single one is loaded there and pushed
    # from it; several stay in buildx's cache and are built from it to the registry.
    if [[ $cmd == build ]]; then
      args=(buildx build "${build[@]}" -t "$ref")
      ((multi)) || args+=(--load)
    elif ((multi)); then
      args=(buildx build "${build[@]}" -t "$ref" --push)
    else
      args=(push "$ref")
    fi
  elif [[ $cmd == build ]]; then
    if ((multi)); then
      # --manifest adds to an existing list of that name: start from an empty one.
      "$engine" manifest rm "$ref" >/dev/null 2>&1 || true
      args=(build "${build[@]}" --manifest "$ref")
    else
      args=(build "${build[@]}" -t "$ref")
    fi
  elif ((multi)); then
    args=(manifest push --all "$ref" "docker://$ref")
  else
    args=(push "$ref")
  fi
  [[ $cmd == build || ${args[0]} == buildx ]] && args+=("$context")
  echo "images: $engine ${args[*]}"
  "$engine" "${args[@]}"
done
echo "images: $cmd done for $registry/$namespace/*:$tag ($platforms)"

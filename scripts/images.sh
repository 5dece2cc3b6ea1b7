#!/usr/bin/env bash
# Builds and pushes urna's container images (what `make images` / `make push` run).
#
#   scripts/images.sh build|push|list
#
# Images are docker.io/$DOCKERHUB_NAMESPACE/<name>:$IMAGE_TAG — the chart's
# global.image.namespace and global.image.tag. The engine is docker or podman, whichever
# is installed (CONTAINER_ENGINE overrides).
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

for row in "${IMAGES[@]}"; do
  IFS='|' read -r name dockerfile context target <<<"$row"
  ref="$registry/$namespace/$name:$tag"
  if [[ $cmd == build ]]; then
    args=(build -f "$dockerfile" -t "$ref")
    [[ $target == - ]] || args+=(--target "$target")
    echo "images: $engine ${args[*]} $context"
    "$engine" "${args[@]}" "$context"
  else
    echo "images: $engine push $ref"
    "$engine" push "$ref"
  fi
done
echo "images: $cmd done for $registry/$namespace/*:$tag"

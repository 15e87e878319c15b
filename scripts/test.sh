#!/usr/bin/env bash
# The test suite, on a fresh Debian machine as root: installs what it needs
# (scripts/setup.sh), then runs pytest; the Grid Engine tests bring up a real
# three-host cluster themselves (lab/ge-cluster.sh) and leave it running: each
# tests/ge test runs on Son of Grid Engine and on Open Cluster Scheduler (built from
# ../shared/ocs once; `--ge-flavor soge` runs one engine only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The type checker over the kit and the simulator (settings in setup.cfg's [mypy]); a
# failure stops here.
.venv/bin/python -m mypy sge/ sim/sge_sim/
# The linter (ruff.toml): pyflakes, import order, no import inside a function outside
# the warm paths.
.venv/bin/python -m ruff check sge/ sim/ tests/ bench/
# Build (or find cached) Open Cluster Scheduler first, in the open: a cold build takes
# minutes, and this way it does not happen inside a test's setup.
flavors=${GE_FLAVORS:-soge,ocs}
prev=""; paths=""; ge=0
for a in "$@"; do
  case "$a" in
    --ge-flavor=*) flavors=${a#*=} ;;
    -*) ;;
    *) if [ "$prev" = --ge-flavor ]; then flavors=$a
       else paths=1; case "$a" in tests|tests/|tests/ge*|./tests|./tests/|./tests/ge*) ge=1 ;; esac; fi ;;
  esac
  prev=$a
done
[ -n "$paths" ] || ge=1   # no paths: the whole suite
if [ "$ge" = 1 ] && [ "$(id -u)" = 0 ]; then
  case ",$flavors," in *,ocs,*) GE_FLAVOR=ocs bash lab/ge-cluster.sh build ;; esac
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The test suite, on a fresh Debian machine as root: installs what it needs
# (scripts/setup.sh), then runs pytest; the Grid Engine tests bring up a real
# three-host cluster themselves (scripts/ge-cluster.sh) and leave it running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The type checker over the package (settings in setup.cfg's [mypy]); a failure stops here.
.venv/bin/python -m mypy sge/
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

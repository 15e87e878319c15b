"""The environment root gives the commands it runs on a job's behalf.

A root prolog inherits the job's environment, so a job owner's `qsub -v PATH=...`
(or LD_PRELOAD, PYTHONPATH, ...) would choose what root runs. As root, commands get a
rebuilt environment instead: the system path, a C locale, and Grid Engine's own
variables so its clients find their cell. Sites add what a command needs (proxies,
registry credentials) explicitly in the config.
"""
from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
GE_VARS = ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT")


def child_env(extra: Optional[Mapping[str, object]] = None,
              always: bool = False) -> Optional[Dict[str, str]]:
    """None (inherit), or a rebuilt environment when running as root inside a job's
    environment (a prolog: Grid Engine sets SGE_JOB_SPOOL_DIR there), or as root at all
    with `always`. An admin's own `sge-image pull` keeps the admin's environment."""
    rebuild = os.geteuid() == 0 and (always or "SGE_JOB_SPOOL_DIR" in os.environ)
    if not rebuild:
        if not extra:
            return None
        env = dict(os.environ)
    else:
        env = {"PATH": ":".join(_ge_bin_dirs() + [SAFE_PATH]), "LANG": "C", "HOME": "/root"}
        env.update({k: os.environ[k] for k in GE_VARS if k in os.environ})
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def _ge_bin_dirs() -> List[str]:
    """Grid Engine's own command directories ($SGE_ROOT/bin/<arch>: Open Cluster
    Scheduler installs qhost there, not on the system path), only where only root can
    have put what is in them: SGE_ROOT comes from the job's environment too."""
    root = os.environ.get("SGE_ROOT")
    if not root or not os.path.isabs(root):
        return []
    base = os.path.join(root, "bin")
    try:
        arches = sorted(os.listdir(base))
    except OSError:
        return []
    return [d for d in (os.path.join(base, a) for a in arches) if _root_only(d)]


def _root_only(path: str) -> bool:
    """`path` and every directory above it belong to root and nobody else may write."""
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent

"""The environment root gives the commands it runs on a job's behalf.

A root prolog inherits the job's environment, so a job owner's `qsub -v PATH=...`
(or LD_PRELOAD, PYTHONPATH, ...) would choose what root runs. As root, commands get a
rebuilt environment instead: the system path, a C locale, and Grid Engine's own
variables so its clients find their cell. Sites add what a command needs (proxies,
registry credentials) explicitly in the config.
"""
import os

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
GE_VARS = ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT")


def child_env(extra=None, always=False):
    """None (inherit), or a rebuilt environment when running as root inside a job's
    environment (a prolog: Grid Engine sets SGE_JOB_SPOOL_DIR there), or as root at all
    with `always`. An admin's own `sge-image pull` keeps the admin's environment."""
    rebuild = os.geteuid() == 0 and (always or "SGE_JOB_SPOOL_DIR" in os.environ)
    if not rebuild:
        if not extra:
            return None
        env = dict(os.environ)
    else:
        env = {"PATH": SAFE_PATH, "LANG": "C", "HOME": "/root"}
        env.update({k: os.environ[k] for k in GE_VARS if k in os.environ})
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env

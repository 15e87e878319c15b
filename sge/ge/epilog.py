"""The queue epilog: end the job's claim on its image (sge/claims.py).

The claim is what kept the job's image from eviction while it ran, with or without the
starter method. Grid Engine runs the epilog after the job, as root@ like the prolog,
with the job's environment (`JOB_ID`, `SGE_TASK_ID`). It always exits 0: any other code
but 99/100, or a death by signal, would put the queue instance into error, and a claim
it fails to remove is harmless (it is live only while the job's active_jobs directory
exists, and the load sensor sweeps it).
"""
from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not os.environ.get("SGE_IMAGE"):
        return 0
    from .. import claims, config
    from ..cluster.hookargs import config_arg
    key = claims.job_key(os.environ.get("JOB_ID", ""), os.environ.get("SGE_TASK_ID", ""))
    if key is None:
        return 0
    # Never SGE_IMAGE_CONFIG: the job owner sets the environment this root process sees.
    settings = config.load(config_arg(argv) or config.DEFAULT_PATH)
    claims.release(settings.cache_root, key)
    return 0


def run() -> None:
    """The process entry (the launcher's `python -c`): 0 whatever happens."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    try:
        main()
    except BaseException as e:  # noqa: BLE001 - nothing may reach Grid Engine but 0
        # One line in the job's error file (and what `install --check` looks for).
        try:
            sys.stderr.write(f"sge-image epilog: cannot end the job's claim: "
                             f"{type(e).__name__}: {e}\n")
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)


if __name__ == "__main__":
    run()

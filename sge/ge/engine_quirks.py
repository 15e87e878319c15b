"""Known Grid Engine bugs that a queue with any prolog exposes, and how install warns.

Both were measured on the lab cluster with the kit's prolog and with `root@/bin/true`
as the prolog (RELIABILITY.md, "Interactive jobs and the shepherd"): they belong to the
engines' shepherds, not to any prolog, but a kit that adds a prolog to a queue that
takes interactive jobs brings them to users who had no prolog before.

- Son of Grid Engine 8.1.9, `admin_user` not root: when a job runs in a pty (qlogin,
  qrsh without a command, and qrsh with a command unless `-pty n`), the shepherd opens
  the job's output files as its owner, cannot switch its effective group back
  (euid is restored before egid: EPERM) and sends SIGTERM to the prolog's process
  group. Whether that kills the prolog is a race (the child must already lead its
  group): under load it does, the prolog dies by a signal and the queue instance goes
  into error. `qrsh -pty n` avoids it.
- Open Cluster Scheduler 9.1.4: a prolog of an interactive job run without a pty
  (`qrsh -pty n`) never starts ("fd for in is not 0", shepherd exit 7), every time,
  and the queue instance goes into error. The default (a pty) works.
"""
from typing import Dict, List, Optional, Tuple


def identify(help_first_line: str) -> Optional[Tuple[str, str]]:
    """("SGE", "8.1.9") or ("OCS", "9.1.4") from the first line `qconf -help` prints."""
    parts = help_first_line.split()
    if len(parts) >= 2 and parts[0] in ("SGE", "OCS", "GE", "UGE") and parts[1][:1].isdigit():
        return parts[0], parts[1]
    return None


def interactive_prolog_warnings(engine: Optional[Tuple[str, str]], admin_user: str,
                                qtypes: Dict[str, str]) -> List[str]:
    """One line per queue that takes interactive jobs, where this engine's shepherd
    turns some interactive jobs into a queue error once the queue has a prolog."""
    if engine is None:
        return []
    name, version = engine
    if name == "SGE" and version.startswith("8.1.") and admin_user != "root":
        why = (f"Son of Grid Engine {version} kills the prolog of a job that runs in a pty "
               f"(qlogin; qrsh unless -pty n) at random when admin_user is not root, and "
               f"the queue instance goes into error")
        fix = ("interactive users of images should run `qrsh -pty n` (for instance from "
               "their ~/.sge_request), or keep interactive work in a queue the kit does "
               "not install into (install --queue)")
    elif name == "OCS" and version.startswith("9.1."):
        why = (f"Open Cluster Scheduler {version} cannot start the prolog of an "
               f"interactive job run without a pty (qrsh -pty n), and the queue instance "
               f"goes into error")
        fix = "interactive users must not pass -pty n; the default works"
    else:
        return []
    return [f"warning: queue {q} takes interactive jobs: {why}; {fix}"
            for q, qtype in sorted(qtypes.items()) if "INTERACTIVE" in qtype.upper().split()]

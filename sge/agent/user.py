"""The agent server's own system user, made by `install` and removed by `uninstall`
only if `install` made it.

Not `nobody`: every process running as nobody (other daemons, NFS-squashed access)
could signal or ptrace a server sharing that uid (issue 17: SIGSTOP froze it). A
system user of its own has no shell, no home and no login, and nothing else runs
as it.
"""
from __future__ import annotations

import pwd
import subprocess

from ..rootenv import child_env

DEFAULT = "sge-image-agent"  # agent.user's default (sge/config.py)


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def create(name: str) -> None:
    """A system user and group of that name (useradd, from shadow's passwd package)."""
    _run(["useradd", "--system", "--user-group", "--no-create-home",
          "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
          "--comment", "sge-image-kit node agent", name])


def remove(name: str) -> None:
    """The user (and its group, which userdel removes with it); gone already is fine."""
    if exists(name):
        _run(["userdel", name])


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env=child_env(always=True))
    if r.returncode != 0:
        raise OSError(f"{' '.join(argv[:1])} {argv[-1]}: "
                      f"{(r.stderr or r.stdout).strip()[:300] or f'exit {r.returncode}'}")

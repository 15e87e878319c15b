"""Thin, testable wrappers over `qconf`: run it, and read/write its text formats.

Son of Grid Engine 8.1.9 facts these guard against (measured):
- `qconf -Mc FILE` replaces the *whole* complex list (there is no `-Ace`), so changes
  are merged into the list read with `-sc`;
- `qconf -Mconf FILE` / `-Aconf FILE` name the configuration after the *file name*
  (`global` or a host name), so files are written under that exact name;
- long values are shown continued with a trailing backslash.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING

from ..errors import SgeImageError

if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional

COMPLEX_COLUMNS = ("name", "shortcut", "type", "relop", "requestable", "consumable",
                   "default", "urgency")


class QconfError(SgeImageError):
    exit_code = 2


def require_qconf() -> None:
    if shutil.which("qconf") is None:
        raise QconfError("qconf not found: run this on a Grid Engine admin host with the "
                         "Grid Engine environment set (SGE_ROOT, SGE_CELL, PATH)")


def run(*args: str, check: bool = True) -> str:
    r = subprocess.run(["qconf", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise QconfError(f"qconf {' '.join(args)} failed: {msg[-1] if msg else r.returncode}")
    return r.stdout


def _logical_lines(text: str) -> List[str]:
    """Lines with backslash continuations joined."""
    out: List[str] = []
    cur = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            cur += line[:-1].rstrip() + " "
            continue
        out.append((cur + line.strip()) if cur else line)
        cur = ""
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------- complexes

def parse_complexes(text: str) -> List[Dict[str, str]]:
    """`qconf -sc` -> list of dicts with the 8 columns (comments dropped)."""
    rows: List[Dict[str, str]] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) < len(COMPLEX_COLUMNS):
            continue
        rows.append(dict(zip(COMPLEX_COLUMNS, parts[:len(COMPLEX_COLUMNS)])))
    return rows


def format_complexes(rows: List[Dict[str, str]]) -> str:
    head = "#" + " ".join(f"{c:<12}" for c in COMPLEX_COLUMNS)
    lines = [head]
    for r in rows:
        lines.append(" ".join(f"{r[c]:<12}" for c in COMPLEX_COLUMNS))
    return "\n".join(lines) + "\n"


def apply_complexes(rows: List[Dict[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "complexes")
        with open(path, "w") as f:
            f.write(format_complexes(rows))
        run("-Mc", path)


# ---------------------------------------------------------------- configurations

def parse_conf(text: str) -> Dict[str, str]:
    """`qconf -sconf NAME` / `-sq Q` -> ordered {attribute: value}."""
    conf: Dict[str, str] = {}
    for line in _logical_lines(text):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, _, value = s.partition(" ")
        conf[key] = " ".join(value.split())
    return conf


def show_conf(name: str) -> Optional[Dict[str, str]]:
    """A host or the global configuration, or None if the host has none."""
    r = subprocess.run(["qconf", "-sconf", name], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return parse_conf(r.stdout)


def write_conf(name: str, conf: Mapping[str, str], add: bool = False) -> None:
    """-Aconf/-Mconf with a file called `name` (qconf takes the config name from it)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "w") as f:
            for k, v in conf.items():
                f.write(f"{k} {v}\n")
        run("-Aconf" if add else "-Mconf", path)


def reapply_global() -> None:
    """Make running execds re-read their host configs: a host config added while an
    execd runs is ignored until the global config is re-applied (measured)."""
    conf = show_conf("global")
    if conf is not None:
        write_conf("global", conf)


def exec_hosts() -> List[str]:
    out = run("-sel", check=False)
    return [h for h in out.split() if h]


def set_queue_attr(queue: str, attr: str, value: str) -> None:
    run("-mattr", "queue", attr, value, queue)


def managers() -> List[str]:
    return run("-sm", check=False).split()

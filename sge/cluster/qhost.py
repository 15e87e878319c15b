"""What the load sensors told qmaster, read back with `qhost -F`.

`qhost -F` prints per host a header line, then `hl:NAME=VALUE` resources; the first
shares its line with "Host Resource(s):". A BOOL load value shows as `1.000000`.
"""
from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from ..errors import SgeImageError
from .complexes import FREE_COMPLEX, TIME_COMPLEX

if TYPE_CHECKING:
    from typing import Dict, Iterable, Optional


class QhostError(SgeImageError):
    exit_code = 2  # as a failing qconf: the cluster, not the image, is the problem


class HostView:
    __slots__ = ("name", "values")

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: Dict[str, str] = {}

    @property
    def sensor_time(self) -> Optional[float]:
        v = self.values.get(TIME_COMPLEX)
        return float(v) if v is not None else None

    @property
    def free_bytes(self) -> Optional[int]:
        v = self.values.get(FREE_COMPLEX)
        return parse_memory(v) if v is not None else None

    def has(self, complex_name: str) -> bool:
        v = self.values.get(complex_name)
        return v is not None and v.lower() in ("1", "1.000000", "true")


def parse(text: str) -> Dict[str, HostView]:
    """`qhost -F` output -> {host: HostView} (the `global` pseudo host is skipped)."""
    hosts: Dict[str, HostView] = {}
    current: Optional[HostView] = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("HOSTNAME") or line.startswith("---"):
            continue
        if not line[0].isspace():
            name = line.split()[0]
            current = None if name == "global" else hosts.setdefault(name, HostView(name))
            continue
        if current is None:
            continue
        for word in line.split():
            if word.startswith(("hl:", "hc:", "hf:")) and "=" in word:
                key, _, value = word[3:].partition("=")
                current.values[key] = value
    return hosts


def read(complexes: Optional[Iterable[str]] = None) -> Dict[str, HostView]:
    args = ["qhost", "-F"] + ([",".join(complexes)] if complexes else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise QhostError(f"qhost failed: {(r.stderr or r.stdout).strip()}")
    return parse(r.stdout)


def parse_memory(value: str) -> int:
    """Grid Engine MEMORY values: `1020.000M`, `2.000G`, plain bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
             "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4}
    value = value.strip()
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(float(value))

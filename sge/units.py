"""Parsing and printing of sizes, shares and durations as admins write them."""
from __future__ import annotations

import re

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*\Z", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(value: object) -> int:
    """'200G' / '1.5T' / 4831838208 -> bytes (binary units: 1G = 2**30)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (examples: 4831838208, 500M, 200G, 1.5T)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_share(value: float | str) -> float:
    """'80%' or 0.8 -> 0.8, within (0, 1]."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a share")
    if isinstance(value, str) and value.strip().endswith("%"):
        share = float(value.strip()[:-1]) / 100
    else:
        share = float(value)
    if not 0 < share <= 1:
        raise ValueError(f"{value!r} must be between 0% and 100%")
    return share


def format_size(n: float) -> str:
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def plural(n: int, word: str) -> str:
    """`1 image`, `2 images`."""
    return f"{n} {word}{'' if n == 1 else 's'}"

"""Series -> Prometheus' text exposition format (what node_exporter's textfile collector
reads): each family once, with its HELP and TYPE lines, its series together, and a
histogram's buckets in ascending order before its _sum and _count."""
from __future__ import annotations

from .families import FAMILIES, PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Tuple

SUFFIXES = ("_bucket", "_sum", "_count")


def family_of(key: str) -> str:
    """`sge_image_x_seconds_bucket{...}` -> `x_seconds` (FAMILIES' key)."""
    name = key.split("{", 1)[0][len(PREFIX):]
    if name in FAMILIES:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and FAMILIES.get(name[:-len(suffix)], ("",))[0] == "histogram":
            return name[:-len(suffix)]
    return name


def render(series: Mapping[str, float]) -> str:
    groups: Dict[str, List[str]] = {}
    for key in series:
        groups.setdefault(family_of(key), []).append(key)
    out: List[str] = []
    for fam, (kind, text) in FAMILIES.items():
        keys = groups.pop(fam, None)
        if not keys:
            continue
        out.append(f"# HELP {PREFIX}{fam} {text}")
        out.append(f"# TYPE {PREFIX}{fam} {kind}")
        for key in sorted(keys, key=_order):
            out.append(f"{key} {format_value(series[key])}")
    # Series of no known family (a state file from a newer kit): left out, since a
    # family without TYPE would be untyped to Prometheus.
    return "\n".join(out) + "\n" if out else ""


def format_value(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1 << 53:
        return str(int(v))
    return repr(float(v))


def _order(key: str) -> Tuple[str, int, float, str]:
    """Series of one label set together; buckets by bound, then _sum, then _count."""
    name, _, labels = key.partition("{")
    le = float("inf")
    rest = []
    for part in labels.rstrip("}").split(","):
        if part.startswith('le="'):
            v = part[4:-1]
            le = float("inf") if v == "+Inf" else float(v)
        elif part:
            rest.append(part)
    suffix = next((i for i, s in enumerate(SUFFIXES) if name.endswith(s)), -1)
    return ",".join(rest), suffix, le, name

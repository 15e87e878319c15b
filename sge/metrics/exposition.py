"""Series -> Prometheus' text exposition format (what node_exporter's textfile collector
reads): each family once, with its HELP and TYPE lines, its series together, and a
histogram's buckets in ascending order before its _sum and _count.

Ordering is the costly part (a host with thousands of cached images has tens of
thousands of series) and changes only when a series appears: `Layout` keeps it, and
the sensor makes a new one only when the set of series changed, reusing what the
last one worked out for each series (a host whose jobs use a new image each cycle
adds a few series a cycle, not a new sort key for every one).
"""
from __future__ import annotations

from .families import FAMILIES, PREFIX

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import AbstractSet, Dict, List, Mapping, Optional, Tuple

SUFFIXES = ("_bucket", "_sum", "_count")


class Layout:
    """The order of a set of series: [(HELP and TYPE lines, [series...])] by family.
    Series of no known family (a state file of a newer kit) are left out: without a
    TYPE they would be untyped to Prometheus."""

    __slots__ = ("keys", "groups", "memo")

    def __init__(self, keys: AbstractSet[str], before: Optional[Layout] = None) -> None:
        self.keys = frozenset(keys)
        # series -> (family, sort key), carried over from the layout this replaces
        self.memo: Dict[str, Tuple[str, Tuple[str, int, float, str]]] = {}
        old = before.memo if before is not None else {}
        by_family: Dict[str, List[Tuple[Tuple[str, int, float, str], str]]] = {}
        for key in self.keys:
            m = old.get(key)
            if m is None:
                m = (family_of(key), _order(key))
            self.memo[key] = m
            by_family.setdefault(m[0], []).append((m[1], key))
        self.groups: List[Tuple[str, List[str]]] = []
        for fam, (kind, text) in FAMILIES.items():
            members = by_family.get(fam)
            if members:
                head = f"# HELP {PREFIX}{fam} {text}\n# TYPE {PREFIX}{fam} {kind}\n"
                members.sort()
                self.groups.append((head, [k for _, k in members]))

    def fits(self, keys: AbstractSet[str]) -> bool:
        return len(keys) == len(self.keys) and self.keys == keys


def family_of(key: str) -> str:
    """`sge_image_x_seconds_bucket{...}` -> `x_seconds` (FAMILIES' key)."""
    name = key.split("{", 1)[0][len(PREFIX):]
    if name in FAMILIES:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and FAMILIES.get(name[:-len(suffix)], ("",))[0] == "histogram":
            return name[:-len(suffix)]
    return name


def render(series: Mapping[str, float], layout: Optional[Layout] = None) -> str:
    if layout is None or not layout.fits(series.keys()):
        layout = Layout(series.keys())
    out: List[str] = []
    for head, keys in layout.groups:
        out.append(head)
        out.extend([f"{k} {format_value(series[k])}\n" for k in keys])
    return "".join(out)


def format_value(v: float) -> str:
    if type(v) is int:
        return str(v)
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

"""Event lines (events.py) -> counter increments: a pure function of the line.

Counters are kept as a flat mapping of series (`name{labels}`, the text the .prom
file carries) to values, so that folding, persisting (state.py) and printing
(exposition.py) need no other model. A histogram observation adds to its `_bucket`,
`_sum` and `_count` series like any counter.

A line that does not parse is counted (`sge_image_metrics_bad_lines_total`) and
skipped: a writer cut short by a full disk leaves a partial line that the next
append completes into garbage, and one lost event must not stop the fold.
"""
from __future__ import annotations

from ..names import is_valid_name
from .events import PEER_FAILURES
from .families import PREFIX, PROLOG_BUCKETS, STAGE_BUCKETS

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Container, Dict, Optional, Sequence, Tuple

    Series = Dict[str, float]

SOURCES = ("origin", "peer", "peer_inflight")
CODES = ("0", "99", "100")
OTHER = "_other"   # the image label of a name outside the catalog (bounded cardinality)


def series_key(name: str, labels: Sequence[Tuple[str, str]] = ()) -> str:
    """`sge_image_NAME{a="x",b="y"}`; label values are checked by the callers (image
    names are [A-Za-z0-9._-], the others fixed words), so nothing needs escaping."""
    if not labels:
        return PREFIX + name
    return PREFIX + name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def add(series: Series, name: str, labels: Sequence[Tuple[str, str]] = (),
        value: float = 1) -> None:
    key = series_key(name, labels)
    series[key] = series.get(key, 0) + value


def observe(series: Series, name: str, labels: Sequence[Tuple[str, str]], value: float,
            buckets: Sequence[float]) -> None:
    """One histogram observation: every bucket whose bound holds it, +Inf, sum, count.
    The other buckets are made at 0: a histogram with buckets missing is not
    cumulative, and histogram_quantile() over hosts would mix different bounds."""
    labels = tuple(labels)
    for bound in buckets:
        add(series, name + "_bucket", labels + (("le", format_bound(bound)),),
            1 if value <= bound else 0)
    add(series, name + "_bucket", labels + (("le", "+Inf"),))
    add(series, name + "_sum", labels, value)
    add(series, name + "_count", labels)


def format_bound(bound: float) -> str:
    return repr(float(bound))


def image_label(name: str, known: Optional[Container[str]]) -> str:
    if not is_valid_name(name):
        return OTHER
    if known is not None and name not in known:
        return OTHER
    return name


def fold_line(series: Series, line: str, known: Optional[Container[str]] = None) -> bool:
    """Add the event `line` (without its newline) to `series`; False if malformed."""
    f = line.split(" ")
    try:
        kind = f[0]
        if kind == "prolog" and len(f) == 5 and f[2] in ("hit", "miss") and f[3] in CODES:
            seconds = _seconds(f[4])
            image = image_label(f[1], known)
            add(series, "cache_lookups_total", (("image", image), ("result", f[2])))
            # the other result at 0: a hit rate over hosts where every job missed is
            # 0, not an empty division (sum() of no series is no value)
            other = "miss" if f[2] == "hit" else "hit"
            series.setdefault(series_key("cache_lookups_total", (("image", image), ("result", other))), 0)
            add(series, "prolog_exits_total", (("code", f[3]),))
            observe(series, "prolog_duration_seconds", (("result", f[2]),), seconds,
                    PROLOG_BUCKETS)
            return True
        if kind == "stage" and len(f) == 5 and f[2] in SOURCES:
            nbytes, seconds = _count(f[3]), _seconds(f[4])
            labels = (("image", image_label(f[1], known)), ("source", f[2]))
            add(series, "stagings_total", labels)
            add(series, "fetched_bytes_total", labels, nbytes)
            observe(series, "staging_duration_seconds", (("source", f[2]),), seconds,
                    STAGE_BUCKETS)
            return True
        if kind == "evict" and len(f) == 3:
            nbytes = _count(f[2])
            image = OTHER if f[1] == "-" else image_label(f[1], known)
            add(series, "evictions_total", (("image", image),))
            add(series, "evicted_bytes_total", (("image", image),), nbytes)
            return True
        if kind == "peer_fail" and len(f) == 2 and f[1] in PEER_FAILURES:
            add(series, "peer_failures_total", (("reason", f[1]),))
            return True
        if kind == "room_wait" and len(f) == 3 and f[1] in ("ok", "timeout"):
            seconds = _seconds(f[2])
            add(series, "room_waits_total", (("outcome", f[1]),))
            add(series, "room_wait_seconds_total", (), seconds)
            return True
    except ValueError:
        pass
    add(series, "metrics_bad_lines_total")
    return False


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e7:  # also refuses nan and inf
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise ValueError(text)
    return int(text)

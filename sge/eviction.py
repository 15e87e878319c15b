"""Eviction as a pure function: a scan of the cache in, a plan out.

`Cache.scan()` describes what is on disk (`CacheScan`); `plan_eviction` decides what
must go for `need` more bytes, and why each other image stays; `Cache` executes the
plan under its eviction lock, and `sge-image gc --dry-run` prints it. The decision is
tested without a filesystem (tests/test_eviction_plan.py), as huggingface_hub does
with `scan_cache_dir` and its delete strategy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Optional, Sequence, Tuple

# Why an image stays when the cap says something must go.
KEPT_PINNED = "pinned by a running job"
KEPT_CLAIMED = "claimed by running job"  # + the jobs' ids
KEPT_RECENT = "handed to a starting job within cache.evict_grace"
KEPT_WANTED = "the image being staged"


class Entry(NamedTuple):
    """One cached blob as `status`, `gc`, eviction and the sensor see it. A named tuple,
    not a frozen dataclass: the sensor makes one per cached blob every cycle, and a
    frozen dataclass's constructor cost 12 ms per 10,000."""

    digest: str
    size: int
    last_used: float
    names: Tuple[str, ...] = ()
    pinned: bool = False            # a starter's flock
    claims: Tuple[str, ...] = ()    # running jobs ("12.3") whose claims hold it

    @property
    def held(self) -> bool:
        """In use by a running job, by its starter's pin or by its claim."""
        return self.pinned or bool(self.claims)


@dataclass(frozen=True)
class CacheScan:
    entries: Tuple[Entry, ...]
    inflight: int      # bytes downloads in progress will still need
    disk_free: int     # bytes free on the cache's filesystem
    now: float

    @property
    def used(self) -> int:
        return sum(e.size for e in self.entries) + self.inflight


@dataclass(frozen=True)
class Limits:
    max_size: Optional[int]
    low_water: float
    min_free: int
    evict_grace: float


@dataclass(frozen=True)
class EvictionPlan:
    need: int
    evict: Tuple[Entry, ...]                 # least recently used first
    kept: Tuple[Tuple[Entry, str], ...]      # held images that eviction may not take
    used_after: int
    free_after: int
    fits: bool                               # after `evict`, `need` fits
    busy: bool = field(default=False)        # it would fit once held images go

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.evict)


def plan_eviction(scan: CacheScan, need: int, limits: Limits,
                  keep: Sequence[str] = ()) -> EvictionPlan:
    """Least recently used first, down to the low-water mark, never a pinned image, one
    used within the grace period, or one in `keep` (digests)."""
    used, free = scan.used, scan.disk_free
    over_cap = limits.max_size is not None and used + need > limits.max_size
    short = free - need < limits.min_free
    if not over_cap and not short:
        return EvictionPlan(need, (), (), used, free, True)
    target = (limits.low_water * limits.max_size - need
              if over_cap and limits.max_size is not None else used)
    recent = scan.now - limits.evict_grace
    evict, kept = [], []
    for e in sorted(scan.entries, key=lambda e: e.last_used):
        if used <= target and free - need >= limits.min_free:
            break
        why = (KEPT_WANTED if e.digest in keep else KEPT_PINNED if e.pinned
               else _claimed(e) if e.claims
               else KEPT_RECENT if e.last_used > recent else None)
        if why:
            kept.append((e, why))
            continue
        evict.append(e)
        used -= e.size
        free += e.size
    fits = not ((limits.max_size is not None and used + need > limits.max_size)
                or free - need < limits.min_free)
    # What is still held may go later: pinned and recent images, other downloads.
    busy = (not fits and (limits.max_size is None or need <= limits.max_size)
            and used > 0 and free + used - need >= limits.min_free)
    return EvictionPlan(need, tuple(evict), tuple(kept), used, free, fits, busy)


def _claimed(e: Entry) -> str:
    jobs = ", ".join(e.claims[:5]) + (f" and {len(e.claims) - 5} more" if len(e.claims) > 5 else "")
    return f"{KEPT_CLAIMED}{'s' if len(e.claims) > 1 else ''} {jobs}"


def room_for_new(scan: CacheScan, limits: Limits) -> int:
    """The bytes a new image could have if every evictable entry (unpinned, last used
    before the grace period) went: the sensor's img_cache_room."""
    recent = scan.now - limits.evict_grace
    evictable = sum(e.size for e in scan.entries if not e.held and e.last_used <= recent)
    disk = scan.disk_free - limits.min_free + evictable
    if limits.max_size is None:
        return max(0, disk)
    return max(0, min(limits.max_size - scan.used + evictable, disk))

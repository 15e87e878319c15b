"""Errors users can act on, each with the CLI exit code it maps to.

`transient` says whether retrying later (another host, another minute) may help; the
prolog turns that into Grid Engine's 99 (reschedule) versus 100 (job error).
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Optional

# Exit codes of `sge-image`; documented in `sge-image --help`.
EXIT_FAILURE = 1        # unexpected internal error
EXIT_USAGE = 2          # bad command line, config or catalog
EXIT_UNKNOWN_IMAGE = 3  # invalid name or not in the catalog
EXIT_NOT_CACHED = 4     # `path`: image not in this node's cache
EXIT_TRANSIENT = 5      # network, server 5xx, timeout, lock wait, disk full: retry later
EXIT_PERMANENT = 6      # 404, 401/403, digest mismatch on every mirror: fix the catalog
EXIT_CORRUPT = 7        # `verify` found and quarantined a bad blob


class SgeImageError(Exception):
    exit_code = EXIT_FAILURE
    transient = False
    # Busy: the host cannot take the image *right now* for a reason that passes by
    # itself (its cache is full of images that running or starting jobs use). Not a
    # failure: the prolog reschedules without spending the job's reschedule budget
    # (issue: full caches sent whole arrays to Eqw).
    busy = False


class ConfigError(SgeImageError):
    exit_code = EXIT_USAGE


class UnknownImage(SgeImageError):
    exit_code = EXIT_UNKNOWN_IMAGE


class NotCached(SgeImageError):
    exit_code = EXIT_NOT_CACHED


class FetchError(SgeImageError):
    """A source failed; `transient` is decided by the fetcher that saw the cause."""

    status: Optional[int] = None  # the HTTP status of a refusal, where a server gave one

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient

    @property
    def exit_code(self) -> int:  # type: ignore[override]  # a class constant elsewhere
        return EXIT_TRANSIENT if self.transient else EXIT_PERMANENT


class VerifyError(FetchError):
    """Downloaded bytes do not match the catalog (size or sha256)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class CacheFull(SgeImageError):
    """Not enough room even after evicting every unpinned image."""
    exit_code = EXIT_TRANSIENT
    transient = True


class CacheBusy(CacheFull):
    """Room exists in principle, but the images filling the cache are pinned by running
    jobs or were handed to starting jobs within `cache.evict_grace`."""
    busy = True


class LockTimeout(SgeImageError):
    exit_code = EXIT_TRANSIENT
    transient = True


class CacheError(SgeImageError):
    """The cache itself is unusable (unwritable root, unsafe permissions)."""
    exit_code = EXIT_TRANSIENT
    transient = True

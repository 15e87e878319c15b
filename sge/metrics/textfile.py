"""The load sensor's metrics cycle: fold what happened since the last cycle into the
persistent counters, and write this host's `.prom` file for node_exporter.

Runs as root in the load sensor, once per load report: no thread, no timer, and a
dead sensor shows as a stale file (node_exporter exports its mtime as
`node_textfile_mtime_seconds`). The file is written to a temp name that does not end
in `.prom` and renamed over the old one in the same directory: the collector reads
either the old file or the new one, never half of one (a torn file makes
node_exporter drop every metric of the file and raise `node_textfile_scrape_error`).
"""
from __future__ import annotations

import os

from . import agent_counts, event_log, exposition
from . import state as _state
from .events import DIR, PEER_FAILURES
from .fold import add, series_key

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Dict, Iterable, Optional, Set

    from ..cache import Cache
    from ..config import Settings

PROM_FILE = "sge_image.prom"
DIR_MODE = 0o755

# agent counts key -> (family, labels)
AGENT_SERIES = {
    "uploads_whole": ("agent_uploads_total", (("kind", "whole"),)),
    "uploads_inflight": ("agent_uploads_total", (("kind", "inflight"),)),
    "upload_bytes": ("agent_upload_bytes_total", ()),
    "busy_slots": ("agent_busy_total", (("reason", "slots"),)),
    "busy_connections": ("agent_busy_total", (("reason", "connections"),)),
    "refused": ("agent_refused_connections_total", ()),
    **{f"stage_{a}": ("agent_stage_requests_total", (("answer", a),))
       for a in agent_counts.STAGE_ANSWERS},
}


class Collector:
    """One per load sensor configuration (rebuilt when the config changes)."""

    def __init__(self, settings: Settings, cache: Cache) -> None:
        from ..config import expand_root
        self.cache = cache
        self.dir = os.path.join(cache.root, DIR)
        self.textfile_dir = expand_root(settings.metrics.textfile_dir)
        self.prom_path = os.path.join(self.textfile_dir, PROM_FILE)
        self.known: Set[str] = set(settings.images)
        self.sizes = {n: i.size for n, i in settings.images.items() if i.size}
        self.agent_enabled = settings.agent.enabled
        self.version = kit_version()
        self.state: Optional[_state.State] = None
        self.layout: Optional[exposition.Layout] = None   # kept while no series appears
        # made once: a host may cache thousands of images
        self.cached_keys = {n: series_key("cached", (("image", n),)) for n in self.known}
        self.size_keys = {n: (series_key("image_size_bytes", (("image", n),)), size)
                          for n, size in self.sizes.items()}
        self.counted: Set[str] = set()   # images with a counter (for their size gauge)
        self.counted_from = -1           # ... as of a state with this many series

    def cycle(self, used: int, free: int, room: int, warm: Iterable[str]) -> None:
        """Fold, save if anything changed, write the .prom file."""
        self.cache.ensure_layout()   # the first staging's events need the file at once
        _mkdir(self.dir)
        if self.state is None:
            self.state = _state.load(self.dir)
        st = self.state
        lines, cursors, skipped = event_log.read_new(self.dir, st.cursors)
        changed = cursors != st.cursors
        from .fold import fold_line
        for line in lines:
            fold_line(st.series, line, self.known)
        if skipped:
            add(st.series, "metrics_bad_lines_total")
        st.cursors = cursors
        if st.prom != self.prom_path:
            st.prom, changed = self.prom_path, True
        up = self._fold_agents(st)
        if changed or up[1]:
            _state.save(self.dir, st)
        event_log.rotate_if_due(self.dir, cursors)
        self.write(self.gauges(used, free, room, warm, up[0]))

    def _fold_agents(self, st: _state.State) -> "tuple[bool, bool]":
        """-> (an agent is up, the state changed)."""
        up = changed = False
        present = set()
        for name, values, alive in agent_counts.read_all(self.dir):
            present.add(name)
            up = up or alive
            if values is None:
                continue  # torn three times in a row: next cycle
            last = st.agents.get(name, {})
            for key, value in values.items():
                before = last.get(key, 0)
                # Within one file a count only grows; less means another file under
                # the same name (impossible by its naming, but never subtract).
                delta = value - before if value >= before else value
                if delta and key in AGENT_SERIES:
                    fam, labels = AGENT_SERIES[key]
                    add(st.series, fam, labels, delta)
                    changed = True
            if alive:
                if last != values:
                    st.agents[name] = values
                    changed = True
            else:
                try:
                    os.unlink(os.path.join(self.dir, name))
                except OSError:
                    pass
                st.agents.pop(name, None)
                changed = True
        for name in set(st.agents) - present:
            del st.agents[name]
            changed = True
        return up, changed

    def gauges(self, used: int, free: int, room: int, warm: Iterable[str],
               agent_up: bool) -> Dict[str, float]:
        """The counters with this cycle's gauges, and 0 for the counters that have not
        counted yet (a query then finds 0 on every host, not nothing)."""
        assert self.state is not None
        out = dict(self.state.series)
        out[series_key("info", (("version", self.version),))] = 1
        out[series_key("cache_bytes")] = used
        if self.cache.max_size is not None:
            out[series_key("cache_max_bytes")] = self.cache.max_size
        out[series_key("cache_free_bytes")] = free
        out[series_key("cache_room_bytes")] = room
        cached = set(warm) & self.known
        out[series_key("cache_images")] = len(cached)
        for name in cached:
            out[self.cached_keys[name]] = 1
        if self.counted_from != len(self.state.series):  # a series appeared
            self.counted = _images_counted(self.state.series)
            self.counted_from = len(self.state.series)
        for name in cached | self.counted:
            if name in self.size_keys:
                key, size = self.size_keys[name]
                out[key] = size
        zeros = [series_key("prolog_exits_total", (("code", c),)) for c in ("0", "99", "100")]
        zeros += [series_key("room_waits_total", (("outcome", o),)) for o in ("ok", "timeout")]
        zeros += [series_key("room_wait_seconds_total"), series_key("metrics_bad_lines_total")]
        zeros += [series_key("peer_failures_total", (("reason", r),)) for r in PEER_FAILURES]
        if self.agent_enabled:
            out[series_key("agent_up")] = 1 if agent_up else 0
            zeros += [series_key(fam, labels) for fam, labels in AGENT_SERIES.values()]
        for key in zeros:
            out.setdefault(key, 0)
        return out

    def write(self, series: Dict[str, float]) -> None:
        _mkdir(self.textfile_dir)
        tmp = os.path.join(self.textfile_dir, f".{PROM_FILE}.{os.getpid()}.tmp")
        # A fresh file, never one found under that name: root writing through a hard
        # link someone planted in a shared directory would overwrite its target.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.fchmod(fd, 0o644)
            if self.layout is None or not self.layout.fits(series.keys()):
                self.layout = exposition.Layout(series.keys(), self.layout)
            data = exposition.render(series, self.layout).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        # No fsync: the file is made again every cycle, and after a crash the next
        # cycle's file replaces whatever was left.
        os.replace(tmp, self.prom_path)


    def retire(self) -> None:
        """The sensor is leaving (execd's `quit`: uninstall, execd stopping): remove the
        file, so node_exporter stops serving figures no one updates. Counters stay."""
        try:
            os.unlink(self.prom_path)
        except OSError:
            pass


def disable(cache: Cache) -> None:
    """Metrics off: remove the event file (appenders stop), dead agents' counts and
    the .prom file last written (the directory is no longer in the config)."""
    d = os.path.join(cache.root, DIR)
    if os.path.isdir(d):
        event_log.remove(d)
        agent_counts.remove_dead(d)
        prom = _state.load(d).prom
        if prom.endswith("/" + PROM_FILE):
            try:
                os.unlink(prom)
            except OSError:
                pass


def kit_version() -> str:
    """The package's own version if it declares one, else the installed
    distribution's; only [A-Za-z0-9.+-] reach the label."""
    import sge
    found = getattr(sge, "__version__", None)
    if not isinstance(found, str):
        try:
            from importlib.metadata import version
            found = version("sge-image-kit")
        except Exception:  # not installed as a distribution (a checkout on PYTHONPATH)
            found = "unknown"
    return "".join(c for c in found if c.isascii() and (c.isalnum() or c in ".+-"))[:64] or "unknown"


def _images_counted(series: Dict[str, float]) -> Set[str]:
    out = set()
    for key in series:
        i = key.find('image="')
        if i >= 0:
            out.add(key[i + 7:key.index('"', i + 7)])
    return out


def _mkdir(path: str) -> None:
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _mkdir(parent)
    try:
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)
    except FileExistsError:
        pass

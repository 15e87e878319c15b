"""The counters and the read position, kept across sensor restarts and reboots.

One JSON file, `<cache>/metrics/state.json`, replaced atomically (sge/fsutil.py) and
only when something changed: counters that reset whenever the sensor restarts (execd
restarts it with every reconfiguration) would make every rate() a guess. Counts and
the event file's cursor are written together, so a sensor killed mid-cycle neither
loses nor repeats an event. A file that is missing or unreadable starts from zero,
which Prometheus reads as a counter reset, the one thing rate() handles.
"""
from __future__ import annotations

import json
import os

from ..fsutil import atomic_write

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Any, Dict

STATE = "state.json"
VERSION = 1


class State:
    __slots__ = ("series", "cursors", "agents", "prom")

    def __init__(self, series: Dict[str, float], cursors: Dict[str, Any],
                 agents: Dict[str, Dict[str, int]], prom: str = "") -> None:
        self.series = series      # "name{labels}" -> value (fold.py)
        self.cursors = cursors    # the event files' read positions (event_log.py)
        self.agents = agents      # agent counts file -> its values already folded
        self.prom = prom          # the .prom file written (removed when metrics go off)

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "series": self.series, "cursors": self.cursors,
                           "agents": self.agents, "prom": self.prom})


def load(metrics_dir: str) -> State:
    try:
        with open(os.path.join(metrics_dir, STATE), "rb") as f:
            data = json.loads(f.read())
        if data.get("version") != VERSION:
            raise ValueError("another version")
        # whole numbers stay ints: counts print as such, and print faster
        series = {str(k): (int(v) if float(v).is_integer() else float(v))
                  for k, v in data["series"].items()}
        cursors = dict(data["cursors"])
        agents = {str(k): {str(a): int(b) for a, b in v.items()}
                  for k, v in data["agents"].items()}
        return State(series, cursors, agents, str(data.get("prom", "")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return State({}, {}, {})


def save(metrics_dir: str, state: State) -> None:
    atomic_write(os.path.join(metrics_dir, STATE), state.to_json(), 0o644)

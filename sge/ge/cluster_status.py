"""`sge-image status --cluster`: which hosts are warm for which image, from the sensors.

A hung or dead sensor leaves its last values in qmaster forever (measured), so a host
whose sensor timestamp is older than a few load report intervals is flagged stale and
its values are not counted as warm.
"""
from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from .. import config
from ..cluster import qhost
from ..units import format_size
from . import qconf

if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, TextIO

    from ..config import Settings

STALE_REPORTS = 3


def load_report_seconds() -> int:
    conf = qconf.show_conf("global") or {}
    value = conf.get("load_report_time", "00:00:40")
    try:
        h, m, s = (int(x) for x in value.split(":"))
        return h * 3600 + m * 60 + s
    except ValueError:
        return 40


def gather(settings: Settings, now: Optional[float] = None) -> Dict[str, Any]:
    now = now or time.time()
    hosts = qhost.read()
    limit = STALE_REPORTS * load_report_seconds()
    host_rows: List[Dict[str, Any]] = []
    for name in sorted(hosts):
        h = hosts[name]
        age = now - h.sensor_time if h.sensor_time is not None else None
        host_rows.append({"host": name, "free_bytes": h.free_bytes, "sensor_age_s": age,
                          "stale": age is None or age > limit})
    fresh = {r["host"] for r in host_rows if not r["stale"]}
    image_rows: List[Dict[str, Any]] = []
    for name, image in sorted(settings.images.items()):
        warm = sorted(h for h in fresh if hosts[h].has(image.complex))
        image_rows.append({"image": name, "warm_hosts": warm, "size": image.size})
    return {"images": image_rows, "hosts": host_rows, "stale_after_s": limit}


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    qconf.require_qconf()
    settings = config.load(args.config)
    data = gather(settings)
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    n = len(data["hosts"])
    out.write(f"{'IMAGE':30} {'WARM':>9}  HOSTS\n")
    for r in data["images"]:
        shown = ",".join(r["warm_hosts"][:8]) + (",..." if len(r["warm_hosts"]) > 8 else "")
        out.write(f"{r['image'][:30]:30} {len(r['warm_hosts']):>4}/{n:<4}  {shown or '-'}\n")
    out.write(f"\n{'HOST':24} {'FREE CACHE':>12} {'SENSOR AGE':>11}\n")
    for r in data["hosts"]:
        free = format_size(r["free_bytes"]) if r["free_bytes"] is not None else "-"
        age = f"{r['sensor_age_s']:.0f}s" if r["sensor_age_s"] is not None else "never"
        flag = "  STALE: sensor silent, values ignored" if r["stale"] else ""
        out.write(f"{r['host'][:24]:24} {free:>12} {age:>11}{flag}\n")
    return 0

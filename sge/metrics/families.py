"""Every metric the kit exports: name, type and help, in the order of the .prom file.

Prometheus conventions: base units (`_bytes`, `_seconds`), counters end in `_total`,
and labels stay few: `image` (a catalog name) is the only per-image label, the rest
take a handful of fixed values. A digest label would make a new series per image
version on every host.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Dict, Tuple

PREFIX = "sge_image_"

# Histogram buckets (upper bounds, seconds). A warm prolog takes milliseconds; a cold
# one a download, a lock wait or a room wait (cache.room_wait, 300 s by default).
PROLOG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

# name (without PREFIX) -> (type, help)
FAMILIES: Dict[str, Tuple[str, str]] = {
    "info": ("gauge", "The kit's version on this host (always 1)."),
    "cache_bytes": ("gauge", "Bytes of the images in this host's cache."),
    "cache_max_bytes": ("gauge", "The cache's size cap (cache.max_size)."),
    "cache_free_bytes": ("gauge", "Room for new images without evicting (img_cache_free)."),
    "cache_room_bytes": ("gauge", "Room for a new image, evicting what may be evicted "
                                  "(img_cache_room)."),
    "cache_images": ("gauge", "Catalog images in this host's cache."),
    "cached": ("gauge", "1 for each catalog image in this host's cache."),
    "image_size_bytes": ("gauge", "The catalog size of each image this host cached or "
                                  "staged (for copies = bytes / size)."),
    "cache_lookups_total": ("counter", "Jobs' image lookups by the prolog: hit (cached) "
                                       "or miss (staged first)."),
    "prolog_exits_total": ("counter", "Prolog exits by code: 0 run, 99 rescheduled, "
                                      "100 job held in error."),
    "prolog_duration_seconds": ("histogram", "Time the prolog took from its first line (the "
                                             "interpreter's start is not in it), by lookup "
                                             "result."),
    "stagings_total": ("counter", "Images staged into this cache, by image and source."),
    "fetched_bytes_total": ("counter", "Verified bytes staged into this cache, by image and "
                                       "source: origin (the catalog's sources), peer (another "
                                       "host's blob), peer_inflight (another host's download "
                                       "in progress)."),
    "staging_duration_seconds": ("histogram", "Time from the start of a download to its "
                                              "verified publication, by source."),
    "evictions_total": ("counter", "Images evicted from this cache."),
    "evicted_bytes_total": ("counter", "Bytes evicted from this cache."),
    "room_waits_total": ("counter", "Stagings that waited for room in a cache full of "
                                    "images in use, by outcome (ok, timeout)."),
    "room_wait_seconds_total": ("counter", "Seconds stagings waited for room."),
    "peer_failures_total": ("counter", "Transfers from other hosts' agents that failed, by "
                                       "reason: refused (no agent listening), timeout, busy "
                                       "(503), error (anything else, wrong bytes included)."),
    "agent_up": ("gauge", "1 while this host's node agent is listening."),
    "agent_uploads_total": ("counter", "Blobs the node agent sent to peers, whole or as a "
                                       "download in progress."),
    "agent_upload_bytes_total": ("counter", "Bytes of the uploads counted in "
                                            "agent_uploads_total."),
    "agent_busy_total": ("counter", "503 answers of the node agent: all upload slots or all "
                                    "connections in use."),
    "agent_refused_connections_total": ("counter", "Connections the node agent refused: "
                                                   "the address is not a trusted host."),
    "agent_stage_requests_total": ("counter", "Staging requests to the node agent, by "
                                              "answer."),
    "metrics_bad_lines_total": ("counter", "Event lines the sensor could not read "
                                           "(cut short by a crash or a full disk)."),
}

"""`sge-image`: the admin's and the hooks' command line.

Subcommands import what they need when they run: `sge-image path` is on every job's
path and must cost little more than starting the interpreter. For the same reason the
common shapes of `pull` and `path` are read without argparse (_fast_args): building the
parser costs more CPU than the rest of a waiter's path to its lock, and a storm starts
twenty of them at once.
"""
from __future__ import annotations

import os
import sys

from . import errors

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Set

    from .config import Settings

EXIT_CODES = """exit codes:
  0  success
  1  unexpected internal error (a bug: please report it with the log)
  2  bad command line, config or catalog (the message names file and line)
  3  invalid image name, or not in the catalog
  4  `path`: the image is not cached on this host
  5  transient failure: network, server error, timeout, lock wait, disk full;
     retrying later may succeed
  6  permanent failure: not found, access denied, digest mismatch on every mirror;
     fix the catalog or the source
  7  `verify` found a corrupt image and quarantined it"""


def _parser() -> argparse.ArgumentParser:
    import argparse
    p = argparse.ArgumentParser(
        prog="sge-image", description="Node-local container image cache for Grid Engine.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH",
                   help="site config (default: $SGE_IMAGE_CONFIG, else /etc/sge-image/config.yaml)")
    from . import __version__
    p.add_argument("--version", action="version", version=f"sge-image-kit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("pull", help="stage an image into this host's cache (once, verified)")
    s.add_argument("name")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    s = sub.add_parser("path", help="print the cached file of an image, or exit 4")
    s.add_argument("name")

    s = sub.add_parser("status", help="table of cached images")
    s.add_argument("--catalog", action="store_true", help="list every catalog image, cached or not")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--cluster", action="store_true",
                   help="per-image warm hosts across the cluster, from the load sensors")

    s = sub.add_parser("gc", help="remove dead temp files; evict down to the low-water mark if over the cap")
    s.add_argument("--dry-run", action="store_true")

    s = sub.add_parser("verify", help="re-hash cached images; quarantine corrupt ones")
    s.add_argument("name", nargs="?")

    s = sub.add_parser("catalog", help="catalog tools")
    s.add_argument("action", choices=["check"])

    from .ge import commands as ge_commands
    ge_commands.add_parsers(sub)
    ge_commands.add_kit_parsers(sub)
    # `sge-image install --dry-run --config F` as well as `sge-image --config F install`:
    # SUPPRESS keeps the global one when the subcommand is not given it.
    for name, parser in sub.choices.items():
        if not any("--config" in a.option_strings for a in parser._actions):
            parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                                help="site config (as the global --config)")
    return p


# Options of the fast path: the exact spellings, nothing argparse would also accept as
# an abbreviation (`--conf`, `--qui`), which is left to argparse.
_FAST_FLAGS = {"pull": {"-q": "quiet", "--quiet": "quiet"}, "path": {}}


def _fast_args(argv: List[str]) -> Optional[Any]:
    """`[--config PATH] pull|path NAME [-q|--quiet] [--config PATH]` as argparse would
    parse it, else None: anything else (help, an error, another subcommand, a repeated
    or abbreviated option, a value that looks like an option) goes to argparse, so its
    messages and exit codes stay the only ones."""
    from types import SimpleNamespace
    values: Dict[str, Any] = {"config": None}
    command = name = None
    seen: Set[str] = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if "config" in seen or i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            seen.add("config")
            values["config"] = argv[i + 1]
            i += 2
            continue
        if command is None:
            if a not in _FAST_FLAGS:
                return None
            command = a
            values.update({v: False for v in _FAST_FLAGS[a].values()})
        elif a in _FAST_FLAGS[command] and a not in seen:
            seen.add(a)
            values[_FAST_FLAGS[command][a]] = True
        elif name is None and not a.startswith("-"):
            name = a
        else:
            return None
        i += 1
    if name is None:
        return None
    return SimpleNamespace(command=command, name=name, **values)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _fast_args(argv) or _parser().parse_args(argv)
    try:
        return args.func(args) if hasattr(args, "func") else COMMANDS[args.command](args)
    except errors.SgeImageError as e:
        print(f"sge-image: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sge-image: interrupted", file=sys.stderr)
        return 130


def load_settings(args: argparse.Namespace) -> Settings:
    from . import config
    return config.load(args.config)


def cmd_pull(args: argparse.Namespace) -> int:
    from .cache import Cache
    settings = load_settings(args)
    image = settings.image(args.name)
    cache = Cache.from_settings(settings)
    path = cache.lookup(image)
    if path is not None:
        cache.record_use(path)  # warm: what a storm's waiters do once they wake
    else:
        from .agent.peers import Peers
        from .log import Log
        from .stage import stage
        progress = None
        if not args.quiet:
            from .sink import Progress
            progress = Progress(args.name, sys.stderr, settings.fetch.progress_interval)
        log = Log.from_settings(settings, echo=None if args.quiet else sys.stderr)
        path = stage(image, cache, settings, progress, log, Peers())
    print(path)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from .cache import Cache
    settings = load_settings(args)
    image = settings.image(args.name)
    path = Cache.from_settings(settings).lookup(image)
    if path is None:
        print(f"sge-image: image {args.name!r} is not cached on this host "
              f"(`sge-image pull {args.name}` stages it)", file=sys.stderr)
        return errors.EXIT_NOT_CACHED
    print(path)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from .cache import Cache
    from .units import format_size
    if args.cluster:
        from .ge import cluster_status
        return cluster_status.main(args)
    settings = load_settings(args)
    cache = Cache.from_settings(settings)
    entries = cache.entries()
    by_digest = {e.digest: e for e in entries}
    rows: List[Dict[str, Any]] = []
    for e in sorted(entries, key=lambda e: -e.last_used):
        rows.append({"name": ",".join(e.names) or "-", "size": e.size, "sha256": e.digest,
                     "last_used": e.last_used, "pinned": e.pinned, "claims": list(e.claims),
                     "cached": True})
    if args.catalog:
        cached_names = {n for e in entries for n in e.names}
        for name, img in sorted(settings.images.items()):
            if name in cached_names:
                continue
            path = cache.lookup(img)
            hit = by_digest.get(os.path.basename(os.path.realpath(path))) if path else None
            rows.append({"name": name, "size": img.size, "sha256": img.sha256 or "",
                         "last_used": hit.last_used if hit else None,
                         "pinned": bool(hit and hit.pinned),
                         "claims": list(hit.claims) if hit else [], "cached": hit is not None})
    if args.json:
        print(json.dumps({"root": cache.root, "images": rows,
                          "max_size": cache.max_size}, indent=2))
        return 0
    used = sum(e.size for e in entries)
    from .units import plural
    cap = format_size(cache.max_size) if cache.max_size else "no"
    print(f"cache {cache.root}: {plural(len(entries), 'image')}, {format_size(used)} of "
          f"{cap} cap")
    if not entries:
        # Typically run on an admin host, whose own cache is empty: say where to look.
        print("this host's cache is empty; `sge-image status --cluster` shows what every "
              "exec host has")
    print(f"{'NAME':30} {'SIZE':>10} {'SHA256':14} {'LAST USED':19} {'PINNED':6} {'CACHED':6} "
          f"CLAIMED BY (JOB.TASK)")
    for r in rows:
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_used"])) if r["last_used"] else "-"
        size = format_size(r["size"]) if r["size"] is not None else "?"
        print(f"{r['name'][:30]:30} {size:>10} {r['sha256'][:12]:14} {last:19} "
              f"{'yes' if r['pinned'] else 'no':6} {'yes' if r['cached'] else 'no':6} "
              f"{' '.join(r['claims']) or '-'}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    import time

    from .cache import Cache
    from .units import format_duration, format_size
    settings = load_settings(args)
    cache = Cache.from_settings(settings)
    cache.ensure_layout()
    if args.dry_run:
        # The same plan `gc` would carry out (sge/eviction.py), each line with its reason.
        for fn in cache.sweep_temps(dry_run=True):
            print(f"would remove dead temp file {fn} (its writer is gone)")
        plan = cache.plan(0)
        for e in plan.evict:
            age = format_duration(max(0, time.time() - e.last_used))
            print(f"would evict {','.join(e.names) or '-'} sha256:{e.digest[:12]} "
                  f"{format_size(e.size)}: least recently used, last used {age} ago")
        for e, why in plan.kept:
            print(f"would keep {','.join(e.names) or '-'} sha256:{e.digest[:12]} "
                  f"{format_size(e.size)}: {why}")
        cap = format_size(cache.max_size) if cache.max_size else "no"
        print(f"{format_size(plan.used_after + plan.freed)} used of {cap} cap; "
              f"{len(plan.evict)} image{'s' if len(plan.evict) != 1 else ''} to evict "
              f"({format_size(plan.freed)})")
        return 0
    for fn in cache.sweep_temps():
        print(f"removed dead temp file {fn}")
    for e in cache.make_room(0):
        print(f"evicted {','.join(e.names) or '-'} sha256:{e.digest[:12]} {format_size(e.size)}")
    cap = format_size(cache.max_size) if cache.max_size else "no"
    print(f"{format_size(cache.used_bytes())} used of {cap} cap")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import hashlib

    from .cache import Cache
    settings = load_settings(args)
    cache = Cache.from_settings(settings)
    wanted = None
    if args.name:
        img = settings.image(args.name)
        path = cache.lookup(img)
        if path is None:
            raise errors.NotCached(f"image {args.name!r} is not cached on this host")
        wanted = os.path.basename(os.path.realpath(path))
    bad = 0
    entries = cache.entries()
    if not entries:
        print(f"nothing to verify: no image is cached in {cache.root}")
    for e in entries:
        if wanted and e.digest != wanted:
            continue
        h = hashlib.sha256()
        with open(cache.blob_path(e.digest), "rb", buffering=0) as f:
            buf = bytearray(1 << 20)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
        label = ",".join(e.names) or e.digest[:12]
        if h.hexdigest() == e.digest:
            print(f"ok       {label}")
        else:
            dest = cache.quarantine(e.digest)
            print(f"CORRUPT  {label}: content hashes to {h.hexdigest()[:16]}...; moved to {dest}")
            bad += 1
    return errors.EXIT_CORRUPT if bad else 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from . import config
    settings = config.load(args.config, use_snapshot=False)
    from .units import plural
    print(f"{settings.path}: {plural(len(settings.images), 'image')}, ok")
    return 0


COMMANDS = {"pull": cmd_pull, "path": cmd_path, "status": cmd_status, "gc": cmd_gc,
            "verify": cmd_verify, "catalog": cmd_catalog}

if __name__ == "__main__":
    sys.exit(main())

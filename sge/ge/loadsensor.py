"""The load sensor: tell Grid Engine, every load report, which images this host has.

Protocol (execd side, SoGE 8.1.9): execd writes a line; the sensor answers `begin`,
`HOST:COMPLEX:VALUE` lines and `end`; `quit` (or EOF) ends it. Rules this follows,
each measured on a real execd:
- every report is the full state: a value missing from a report is deleted by qmaster,
  which is how an evicted image stops attracting jobs;
- a report line of 9,999 bytes kills execd and other Grid Engines parse 1,000-byte
  buffers: no line here reaches 1,000 bytes;
- stdout carries protocol lines only; everything else goes to the log file;
- a cache it cannot read gives a report without image values (stale "warm" values
  would send jobs to a host that cannot serve them), but with the timestamp, so a
  live sensor is told apart from a dead one;
- it never exits except on `quit`/EOF; `loadsensor/sge-image-loadsensor` restarts it
  after a crash anyway, because execd breaks when its sensor dies.
"""
import os
import sys
import time

MAX_LINE = 999
FREE_COMPLEX = "img_cache_free"
TIME_COMPLEX = "img_sensor_time"
LIST_COMPLEX = "images"


def report_lines(host, settings, cache):
    """The protocol lines of one report (without begin/end)."""
    now = int(time.time())
    lines = [f"{host}:{TIME_COMPLEX}:{now}"]
    try:
        blobs = _blob_sizes(cache.root)
    except OSError:
        return lines  # vanished or unreadable cache: nothing is warm here
    warm = []
    for name, image in settings.images.items():
        if image.sha256:
            size = blobs.get(image.sha256)
        else:
            try:
                size = blobs.get(os.path.basename(os.readlink(cache.path_for(image))))
            except OSError:
                size = None
        if size is not None and (image.size is None or size == image.size):
            warm.append(name)
            lines.append(f"{host}:{image.complex}:1")
    lines.append(f"{host}:{FREE_COMPLEX}:{_free_bytes(cache, sum(blobs.values()))}")
    if settings.values["sensor"]["list_complex"]:
        lines.append(_list_line(host, warm))
    return [line for line in lines if len(line) <= MAX_LINE]


def _blob_sizes(root):
    sizes = {}
    with os.scandir(os.path.join(root, "blobs", "sha256")) as it:
        for de in it:
            # Only complete images: temp files live in tmp/, locks in locks/.
            if de.is_file(follow_symlinks=False):
                sizes[de.name] = de.stat(follow_symlinks=False).st_size
    return sizes


def _free_bytes(cache, used):
    """Room for new images: the smaller of what the cap allows and the disk holds."""
    try:
        disk = cache.free_bytes()
    except OSError:
        disk = 0
    if cache.max_size is None:
        return disk
    return max(0, min(cache.max_size - used, disk))


def _list_line(host, names):
    """`;a;b;` (requested as `images=*;NAME;*`), cut to fit the line limit."""
    head = f"{host}:{LIST_COMPLEX}:;"
    value, room = [], MAX_LINE - len(head)
    for n in names:
        if len(n) + 1 > room:
            break
        value.append(n)
        room -= len(n) + 1
    return head + "".join(f"{n};" for n in value)


def main(argv=None):
    from .. import config
    from ..cache import Cache
    from ..log import Log
    from .hookargs import config_arg
    argv = sys.argv[1:] if argv is None else argv
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    _divert_stray_output()
    host = os.environ.get("HOST") or __import__("socket").gethostname()
    path = config_arg(argv)
    log = Log(tag="sge-image loadsensor")
    settings = cache = None
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            return 0
        try:
            if settings is None or settings.is_stale():
                settings = config.load(path)
                cache = Cache.from_settings(settings)
                log = Log.from_settings(settings, tag="sge-image loadsensor")
            lines = report_lines(host, settings, cache)
        except Exception as e:  # report nothing warm rather than die or lie
            log(f"report failed: {type(e).__name__}: {e}")
            settings = None
            lines = [f"{host}:{TIME_COMPLEX}:{int(time.time())}"]
        proto.write("begin\n" + "".join(f"{x}\n" for x in lines) + "end\n")
        proto.flush()


def _divert_stray_output():
    """Anything printed by accident must not reach execd's protocol pipe."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    sys.exit(main())

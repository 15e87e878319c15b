"""Writing a file so that a crash leaves either the old one or the new one, whole.

`atomic_write` is the one way the kit writes a file that must survive a crash: a temp
file beside the target (same filesystem, so the rename is atomic), its bytes and mode
fsynced, `os.replace` over the target, then the directory fsynced so the rename itself
is durable. As pip's `adjacent_tmp_file` + `replace` do. Images do not come through
here: the cache publishes them through its own verifying path (sge/cache.py).
"""
from __future__ import annotations

import errno
import os
from contextlib import suppress

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Union


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, data: Union[str, bytes], mode: int = 0o644) -> None:
    """Replace `path` with `data` (str or bytes), crash-safe. The temp name carries the
    pid, so two writers never share a temp file (the install state used a fixed .tmp)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = f"{path}.{os.getpid()}.{os.urandom(3).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))

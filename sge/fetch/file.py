"""file:///path and plain paths: images on a shared filesystem or a local disk."""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import FetchError

if TYPE_CHECKING:
    from ..sink import Sink
    from . import Context


def local_path(url: str) -> str:
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"{url}: file URLs must name a local path (file:///path)", transient=False)
    return unquote(parts.path)


def fetch(url: str, sink: Sink, ctx: Context) -> None:
    path = local_path(url)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        # A missing file is the catalog's fault; anything else (EIO, a stale NFS
        # handle, a mount not yet up) may pass.
        transient = e.errno not in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR)
        raise FetchError(f"{path}: {e.strerror}", transient=transient) from None
    try:
        copy_into(fd, sink)
    except OSError as e:
        raise FetchError(f"{path}: read failed: {e.strerror}", transient=True) from None


def copy_into(fd: int, sink: Sink) -> None:
    """Stream an open file into the sink's buffers; closes `fd`."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            buf = sink.buffer()
            n = os.readv(fd, [buf])
            sink.commit(n)
            if not n:
                return
    finally:
        os.close(fd)

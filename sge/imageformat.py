"""What kind of image a cached blob is: SIF or plain SquashFS, told by its magic.

Runtimes differ in what they can run: Apptainer and Singularity run both, Charliecloud
and Enroot only plain SquashFS. A job must learn that at submit or staging time, in one
line, not from a runtime's mount error deep inside its output (sge/runtimes.py holds
which runtime runs what).

The format is read once, when a verified blob is published, and recorded beside the
cache as `formats/<hex>`; a blob published before that (or by an older kit) is read
again on demand, which costs one 64-byte read.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Optional

SIF = "sif"
SQUASHFS = "squashfs"
UNKNOWN = "unknown"
FORMATS = (SIF, SQUASHFS)

SIF_MAGIC = b"SIF_MAGIC"      # at byte 32 of every SIF file (after the launch script)
SIF_MAGIC_OFFSET = 32
SQUASHFS_MAGIC = b"hsqs"      # a little-endian SquashFS superblock starts with it


def from_head(head: bytes) -> str:
    """The format of a file that starts with `head` (its first 64 bytes suffice)."""
    if head[:4] == SQUASHFS_MAGIC:
        return SQUASHFS
    if head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] == SIF_MAGIC:
        return SIF
    return UNKNOWN


def of_fd(fd: int) -> str:
    return from_head(os.pread(fd, 64, 0))


def of_path(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return UNKNOWN
    try:
        return of_fd(fd)
    finally:
        os.close(fd)


def _record_path(root: str, digest: str) -> str:
    return os.path.join(root, "formats", digest)


def record(root: str, digest: str, fd: int) -> str:
    """Write the format of the blob open as `fd` to `formats/<digest>` (best effort:
    a reader that finds no record reads the blob's head instead)."""
    fmt = of_fd(fd)
    # A plain write, not a crash-safe one: the record is derived from the blob, and a
    # torn or missing one is read as "no record" and the blob's head is read instead.
    try:
        _mkdir(os.path.join(root, "formats"))
        out = os.open(_record_path(root, digest),
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.fchmod(out, 0o644)  # readable by job owners whatever the umask
            os.write(out, (fmt + "\n").encode())
        finally:
            os.close(out)
    except OSError:
        pass
    return fmt


def _mkdir(path: str) -> None:
    """0755 whatever the umask, like every directory of the cache (a root prolog under
    umask 077 made directories job owners could not read)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


def recorded(root: str, digest: str) -> Optional[str]:
    try:
        with open(_record_path(root, digest)) as f:
            value = f.read(32).strip()
    except OSError:
        return None
    return value if value in FORMATS or value == UNKNOWN else None


def forget(root: str, digest: str) -> None:
    try:
        os.unlink(_record_path(root, digest))
    except OSError:
        pass


def of_cached(root: str, path: str) -> str:
    """The format of the cached image at `path` (a blob or a name pointing at one)."""
    digest = os.path.basename(os.path.realpath(path))
    return recorded(root, digest) or of_path(path)

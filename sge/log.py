"""One log line per event, appended to the site's log file (O_APPEND keeps lines from
concurrent prologs whole), and optionally echoed to a stream such as the job's output."""
from __future__ import annotations

import os
import time
from contextlib import suppress

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Optional, TextIO

    from .config import Settings


class Log:
    def __init__(self, path: Optional[str] = None, echo: Optional[TextIO] = None,
                 tag: str = "sge-image") -> None:
        self.path = path
        self.echo = echo
        self.tag = tag

    @classmethod
    def from_settings(cls, settings: Settings, echo: Optional[TextIO] = None,
                      tag: str = "sge-image") -> Log:
        return cls(settings.log.file, echo, tag)

    def __call__(self, msg: str) -> None:
        if self.echo is not None:
            with suppress(OSError, ValueError):  # a closed or broken stream
                self.echo.write(f"{self.tag}: {msg}\n")
                self.echo.flush()
        if not self.path:
            return
        import socket  # here, not at the top: a storm's waiters import this and never log
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} "
                f"{self.tag}[{os.getpid()}] {msg}\n").encode("utf-8", "replace")
        with suppress(OSError):  # logging must never break staging
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

"""One log line per event, appended to the site's log file (O_APPEND keeps lines from
concurrent prologs whole), and optionally echoed to a stream such as the job's output."""
import os
import socket
import time


class Log:
    def __init__(self, path=None, echo=None, tag="sge-image"):
        self.path = path
        self.echo = echo
        self.tag = tag

    @classmethod
    def from_settings(cls, settings, echo=None, tag="sge-image"):
        return cls(settings.values["log"]["file"], echo, tag)

    def __call__(self, msg):
        if self.echo is not None:
            try:
                self.echo.write(f"{self.tag}: {msg}\n")
                self.echo.flush()
            except (OSError, ValueError):
                pass
        if not self.path:
            return
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} "
                f"{self.tag}[{os.getpid()}] {msg}\n").encode("utf-8", "replace")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            pass  # logging must never break staging

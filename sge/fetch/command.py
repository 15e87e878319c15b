"""docker://, library://, shub:// and anything else Apptainer can pull: run a configured
command that writes the image to a file, then feed that file through the sink, so the
bytes published are the bytes hashed and verified, through the same atomic path as
every other source.

The template is a list of words, site-wide under `sources: {command: {template: [...]}}`
and per image under `command: {template: [...]}` (a plain string is split like a
shell would split it, but no shell ever runs). Placeholders inside words: {uri} (the
image's URL), {dest} (the file the command must create), {tmp} (an empty private
directory for its scratch files). `env: {NAME: value}` adds environment variables;
in a root prolog the command otherwise gets a rebuilt environment, not the job's
(sge/rootenv.py).

Where {dest} lives: `<sink temp file>.cmd/image`, a private directory beside the
temp file, so on the cache's filesystem. A directory because the cache's temp sweep
unlinks files whose writer's flock is gone, and a command's output file has no such
lock; the directory cannot be unlinked by that sweep, and this module holds a flock
on it while the command runs, so its own sweep of `*.cmd` leftovers (a stager killed
with SIGKILL) can tell a live pull from a dead one.

The output is not copied: while the command runs, a thread pushes what it has
written to disk (sync_file_range, as the sink does with its own writes), and when it
has exited the sink adopts the file (`Sink.adopt`): one read pass hashes it from the
page cache, then it is renamed over the temp file and verified and published like any
download. A file that cannot be adopted safely (a symlink, a hard link, or still open
for writing by something that outlived the command) is copied through the sink
instead, which hashes exactly the bytes it publishes. Either way a file that is not
the catalog's bytes is never published.

The command runs in its own process group; a timeout (fetch.command_timeout) or a
SIGTERM/SIGINT/SIGHUP to the stager kills the whole group, so no orphaned pull keeps
writing into the cache.
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from ..errors import FetchError
from ..rootenv import child_env
from ..sink import _load_sfr, push_writeback
from ..tempfiles import sweep_command_dirs
from . import file, redact, source_options

if TYPE_CHECKING:
    from types import FrameType
    from typing import (
        IO,
        AbstractSet,
        Any,
        Callable,
        Dict,
        List,
        Mapping,
        Optional,
        Sequence,
        Union,
    )

    from ..sink import Sink
    from . import Context, Problem

    # what signal.signal returns: a handler, SIG_DFL/SIG_IGN, or None (set outside Python)
    SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

OPTION_KEYS = {
    "template": "the command as a list of words, with {dest} and {uri}",
    "env": "a mapping of extra environment variables",
}
SITE_KEYS: Optional[AbstractSet[str]] = None  # every option may also be set site-wide
DEFAULT_TEMPLATE = ["apptainer", "pull", "--disable-cache", "{dest}", "{uri}"]
GRACE = 5.0                 # seconds between SIGTERM and SIGKILL
LOG_LINES = 200             # a chatty pull must not flood the site log
TAIL_LINES = 5
# Checked on the last lines of output only; network trouble wins over "not found"
# because a retry message may quote the reference.
TRANSIENT_OUTPUT = re.compile(r"timeout|timed out|temporar|connection (refused|reset)|"
                              r"no route|network|too many requests|\b5\d\d\b|unavailable",
                              re.I)
PERMANENT_OUTPUT = re.compile(r"manifest unknown|not found|unauthori[sz]ed|authentication "
                              r"required|denied|invalid reference|does not exist|no such",
                              re.I)


def check_options(options: Mapping[str, Any]) -> Optional[Problem]:
    for key, value in options.items():
        if key == "template":
            try:
                words = template_words(value)
            except ValueError as e:
                return key, str(e)
            if not any("{dest}" in w for w in words):
                return key, "must pass {dest}, the file the command writes"
        elif key == "env":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
                    and isinstance(v, (str, int, float)) and not isinstance(v, bool)
                    for k, v in value.items()):
                return key, "must map variable names to text"
    return None


def template_words(value: object) -> List[str]:
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(w, str) and w
                                                           for w in value):
        raise ValueError(f"{value!r} is not a command (a list of words)")
    return value


def argv_for(template: object, uri: str, dest: str, tmp: str) -> List[str]:
    """Substitution word by word: a URI with spaces or `;` stays one argument."""
    return [w.replace("{uri}", uri).replace("{dest}", dest).replace("{tmp}", tmp)
            for w in template_words(template)]


def fetch(url: str, sink: Sink, ctx: Context) -> None:
    opts = source_options(ctx, "command")
    shown = redact(url)
    # Leftovers of a stager killed with SIGKILL, judged by the cache's one rule.
    sweep_command_dirs(os.path.dirname(sink.path))
    work = sink.path + ".cmd"
    try:
        os.mkdir(work, 0o700)
    except FileExistsError:
        shutil.rmtree(work, ignore_errors=True)  # ours, from an earlier attempt
        os.mkdir(work, 0o700)
    except OSError as e:
        raise FetchError(f"{shown}: cannot create {work}: {e.strerror}", transient=True) from None
    lock = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dest = os.path.join(work, "image")
        scratch = os.path.join(work, "tmp")
        os.mkdir(scratch, 0o700)
        argv = argv_for(opts.get("template", DEFAULT_TEMPLATE), url, dest, scratch)
        # As root (the prolog) the job's environment must not choose which command
        # runs or how: a rebuilt environment plus the configured `env` (sge/rootenv.py).
        env = child_env(opts.get("env")) or dict(os.environ)
        follower = _Writeback(dest)
        try:
            run(argv, ctx, shown, env, cwd=work)
        finally:
            follower.stop()
        if sink.received:
            sink.reset()
        take_output(dest, sink, shown, ctx)
    except _Signalled as e:
        caught: Optional[int] = e.signum
    else:
        caught = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)
    if caught:
        signal.raise_signal(caught)  # the stager was told to stop: now it stops
        raise FetchError(f"{shown}: interrupted by signal {caught}", transient=True)


class _Signalled(Exception):
    """A termination signal arrived while the command ran (its group is dead)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(argv: Sequence[str], ctx: Context, shown: str, env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None) -> None:
    """Run `argv` in its own process group with output to the log; FetchError on
    failure or timeout, _Signalled on a termination signal (the group is dead)."""
    name = ctx.image.name
    ctx.log(f"image {name}: running {shlex.join(redact(a) if '://' in a else a for a in argv)}")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=cwd)
    except OSError as e:
        raise FetchError(f"{shown}: cannot run {argv[0]!r}: {e.strerror} (install it, or set "
                         f"sources.command.template)", transient=False) from None
    tail: List[str] = []
    reader = threading.Thread(target=_read_output, args=(proc.stdout, ctx, name, tail),
                              daemon=True)
    reader.start()
    caught: List[int] = []
    previous = _trap_signals(proc, caught)
    deadline = time.monotonic() + ctx.command_timeout
    timed_out = False
    try:
        while not _wait_exit(proc, 0.1):
            if caught or time.monotonic() >= deadline:
                timed_out = not caught
                _kill_group(proc)
                break
    finally:
        # Whatever the outcome, nothing of the group outlives the call: a pull's
        # helper left behind would keep writing into the cache (and the pipe open).
        _kill_group(proc, grace=0)
        proc.wait()
        reader.join(timeout=5)
        _restore_signals(previous)
    if caught:
        raise _Signalled(caught[0])
    last = tail[-1] if tail else "no output"
    if timed_out:
        raise FetchError(f"{shown}: {argv[0]} timed out after {ctx.command_timeout:.0f}s "
                         f"(fetch.command_timeout); last output: {last}", transient=True)
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        text = "\n".join(tail)
        transient = bool(TRANSIENT_OUTPUT.search(text)) or not PERMANENT_OUTPUT.search(text)
        raise FetchError(f"{shown}: {argv[0]} failed ({how}): {last}", transient=transient)


def _read_output(stream: IO[bytes], ctx: Context, name: str, tail: List[str]) -> None:
    logged = 0
    for raw in iter(lambda: stream.readline(65536), b""):
        # Progress bars redraw with \r: each redraw is a line of its own.
        for part in raw.replace(b"\r", b"\n").split(b"\n"):
            line = part.decode("utf-8", "replace").strip()
            if not line:
                continue
            tail.append(line[:500])
            del tail[:-TAIL_LINES]
            if logged < LOG_LINES:
                ctx.log(f"image {name}: command: {line[:500]}")
            elif logged == LOG_LINES:
                ctx.log(f"image {name}: command: (further output not logged)")
            logged += 1
    stream.close()


def _trap_signals(proc: subprocess.Popen[bytes],
                  caught: List[int]) -> Dict[signal.Signals, SignalHandler]:
    """While the command runs, a termination signal kills its group first; only the
    main thread may set handlers (elsewhere the group is still killed in `run`)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        if not caught:
            caught.append(signum)
    previous: Dict[signal.Signals, SignalHandler] = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: Dict[signal.Signals, SignalHandler]) -> None:
    for sig, old in previous.items():
        with suppress(ValueError, OSError):
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the leader has exited, waiting up to `timeout`, without reaping it: an
    unreaped leader keeps its pid, so the group id cannot be reused by a stranger
    before `_kill_group` has sent its last signal."""
    end = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = GRACE) -> None:
    """SIGTERM to the group (Apptainer removes its scratch files), SIGKILL after `grace`."""
    sigs = [signal.SIGTERM, signal.SIGKILL] if grace else [signal.SIGKILL]
    for sig in sigs:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGTERM:
            _wait_exit(proc, grace)


class _Writeback:
    """While the command runs: push its output file's dirty pages to disk as it grows,
    so that the fsync before publishing has little left to do. Follows {dest} by name
    (a command may write elsewhere and rename it into place); does nothing where
    sync_file_range is missing."""

    INTERVAL = 0.05

    def __init__(self, path: str) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if _load_sfr():
            self._thread = threading.Thread(target=self._run, name="command-writeback",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        fd: Optional[int] = None
        ino: Optional[int] = None
        synced = 0
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    st = os.stat(self.path)
                    if fd is None or st.st_ino != ino:
                        if fd is not None:
                            os.close(fd)
                            fd = None
                        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                        ino, synced = os.fstat(fd).st_ino, 0
                    synced = push_writeback(fd, synced, st.st_size)
                except OSError:
                    continue  # not there yet, or replaced: try again
        finally:
            if fd is not None:
                os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def take_output(dest: str, sink: Sink, shown: str, ctx: Optional[Context] = None) -> None:
    """The command's output into the sink: adopted where safe, else copied."""
    try:
        st = os.stat(dest)
    except OSError as e:
        raise FetchError(f"{shown}: the command succeeded but wrote no image at {{dest}} "
                         f"({e.strerror}); does the template pass {{dest}} as the output "
                         f"file?", transient=False) from None
    if st.st_size == 0:
        raise FetchError(f"{shown}: the command wrote an empty file", transient=False)
    try:
        adopted = sink.adopt(dest)
    except OSError as e:
        raise FetchError(f"{shown}: cannot read the command's output: {e.strerror}",
                         transient=True) from None
    if not adopted:
        if ctx is not None:
            ctx.log(f"image {ctx.image.name}: the command's output is a link or still open for "
                    f"writing; copying it instead of taking it over")
        copy_into(dest, sink, shown)


def copy_into(dest: str, sink: Sink, shown: str) -> None:
    try:
        opened = os.open(dest, os.O_RDONLY)
    except OSError as e:
        raise FetchError(f"{shown}: the command succeeded but wrote no image at {{dest}} "
                         f"({e.strerror}); does the template pass {{dest}} as the output "
                         f"file?", transient=False) from None
    fd: Optional[int] = opened  # to close here, until file.copy_into takes it over
    try:
        if os.fstat(opened).st_size == 0:
            raise FetchError(f"{shown}: the command wrote an empty file", transient=False)
        fd = None
        file.copy_into(opened, sink)  # closes it
    except OSError as e:
        raise FetchError(f"{shown}: cannot read the command's output: {e.strerror}",
                         transient=True) from None
    finally:
        if fd is not None:
            os.close(fd)

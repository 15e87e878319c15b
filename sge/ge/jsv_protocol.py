"""The Grid Engine JSV (job submission verifier) protocol, as a reusable loop.

Python has no working JSV library (the `JSV.py` shipped with Son of Grid Engine
8.1.9 is Python 2 and broken), so this module speaks the wire protocol itself and
hands each job to a `verify(job) -> Result` callback:

    Grid Engine                       JSV
    START                       ->
                                <-    SEND ENV        (optional: ask for the job env)
                                <-    STARTED
    PARAM name value ...        ->
    ENV ADD name value ...      ->    (only after SEND ENV)
    BEGIN                       ->
                                <-    PARAM name value / ENV ADD|MOD|DEL ... / LOG ...
                                <-    RESULT STATE ACCEPT|CORRECT|REJECT|REJECT_WAIT [msg]
    QUIT                        ->    (process exits)

Every rule below guards against a measured Grid Engine behaviour:

* Anything on stderr makes qmaster reject the job and restart the JSV; any line
  it does not know (`ERROR ...`, what jsv_include.sh sends on protocol errors)
  rejects the job. So input problems are never answered with an unknown command:
  they become a `LOG ERROR` line in server context, a log-file line otherwise.
* A crash or silence rejects the job after ~21 s; a hang blocks a qmaster worker
  thread for good. So exactly one RESULT per BEGIN, whatever `verify` does, and
  `verify` runs under a timer (`timeout`), never longer.
* In client context (`qsub -jsv`) qsub prints every LOG text on its stdout,
  which breaks `qsub -terse` parsing: LOG lines are only sent in server context.
* qmaster reads our lines with `fscanf("%[^\\n]")` into a 10,000-byte stack
  buffer: no line may reach that size, and no text may contain a newline.
* qmaster splits our lines at spaces with strtok: `PARAM l_hard ` (no value)
  deletes the list, as the protocol intends.
"""
from __future__ import annotations

import signal

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from types import FrameType
    from typing import IO, Callable, Dict, Iterable, List, Optional, Tuple

    Verify = Callable[["Job"], "Result"]

ACCEPT = "ACCEPT"
CORRECT = "CORRECT"
REJECT = "REJECT"
REJECT_WAIT = "REJECT_WAIT"
STATES = (ACCEPT, CORRECT, REJECT, REJECT_WAIT)
LOG_LEVELS = ("INFO", "WARNING", "ERROR")

# Longest input line kept (bytes); longer ones are read to their end and dropped,
# and the job they belong to is rejected rather than verified on partial data.
MAX_IN_LINE = 1 << 20
# Longest line we write; qmaster's read buffer is 10,000 bytes (see above).
MAX_OUT_LINE = 8000
# Longest message or log text, in characters, after cleaning.
MAX_TEXT = 480


class JsvTimeout(BaseException):
    """Raised inside `verify` when its time is up (BaseException, so that a
    callback's `except Exception` cannot swallow it)."""


class Job:
    """One job as Grid Engine described it: `params` and `env` (name -> value)."""

    __slots__ = ("params", "env", "problems")

    def __init__(self) -> None:
        self.params: Dict[str, str] = {}
        self.env: Dict[str, str] = {}
        self.problems: List[str] = []  # input lines this job lost (too long, undecodable, ...)

    @property
    def context(self) -> Optional[str]:
        """"server" (qmaster, `jsv_url`) or "client" (`qsub -jsv`), else None."""
        return self.params.get("CONTEXT")

    def __repr__(self) -> str:
        return f"Job(params={self.params!r}, env={self.env!r})"


class Result:
    """The answer to one job: the final state, a message for the user, and the
    corrections (`params`: (name, value), an empty value deletes; `env`: (op,
    name, value) with op ADD, MOD or DEL; `logs`: (level, text))."""

    __slots__ = ("state", "message", "params", "env", "logs")

    def __init__(self, state: str, message: str = "", params: Iterable[Tuple[str, object]] = (),
                 env: Iterable[Tuple[str, str, object]] = (),
                 logs: Iterable[Tuple[str, str]] = ()) -> None:
        self.state = state
        self.message = message
        self.params = list(params)
        self.env = list(env)
        self.logs = list(logs)

    @classmethod
    def accept(cls, message: str = "", logs: Iterable[Tuple[str, str]] = ()) -> Result:
        return cls(ACCEPT, message, logs=logs)

    @classmethod
    def reject(cls, message: str, logs: Iterable[Tuple[str, str]] = ()) -> Result:
        return cls(REJECT, message, logs=logs)

    @classmethod
    def reject_wait(cls, message: str, logs: Iterable[Tuple[str, str]] = ()) -> Result:
        return cls(REJECT_WAIT, message, logs=logs)

    def __repr__(self) -> str:
        return (f"Result({self.state}, {self.message!r}, params={self.params!r}, "
                f"env={self.env!r}, logs={self.logs!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


def clean_text(text: object, limit: int = MAX_TEXT, format_safe: bool = False) -> str:
    """`text` as one printable line of at most `limit` characters.

    `format_safe` also replaces `%`: Grid Engine's own source (and its successor,
    Open Cluster Scheduler) passes a RESULT message to a printf-style function as
    the format, where `%n` in a user-chosen image name would write to memory.
    """
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    if format_safe and "%" in text:
        text = text.replace("%", "?")
    if len(text) > limit:
        text = text[:max(limit - 3, 0)] + "..."
    return text


class JsvLoop:
    """Serve JSV requests from `stdin` (binary) to `stdout` (binary) until QUIT or EOF.

    verify(job) -> Result     the policy; called once per BEGIN.
    timeout                   seconds `verify` may take (None: unlimited). Read at
                              every job, so a caller may change it between jobs.
    on_timeout(job) -> Result answer when `verify` ran out of time.
    on_error(job, exc) -> Result  answer when `verify` raised (a bug).
    log(msg)                  where events go that must not reach Grid Engine.
    send_env                  answer START with `SEND ENV` to receive the job env.
    after_job() -> bool       called after each answer; False ends the loop.

    `in_job` is true from START to the answer, and `lock` is held while a line is
    handled: another thread may end the process only between jobs.
    """

    def __init__(self, verify: Verify, stdin: IO[bytes], stdout: IO[bytes],
                 timeout: Optional[float] = None,
                 on_timeout: Optional[Callable[[Job], Result]] = None,
                 on_error: Optional[Callable[[Job, BaseException], Result]] = None,
                 log: Optional[Callable[[str], None]] = None, send_env: bool = True,
                 after_job: Optional[Callable[[], bool]] = None) -> None:
        self.verify = verify
        self.stdin = stdin
        self.stdout = stdout
        self.timeout = timeout
        self.on_timeout: Callable[[Job], Result] = on_timeout or (lambda job: Result.reject_wait(
            "job verification timed out; try again later"))
        self.on_error: Callable[[Job, BaseException], Result] = on_error or (lambda job, exc: Result.reject_wait(
            "internal error in the job submission verifier; try again later"))
        self.log: Callable[[str], None] = log or (lambda msg: None)
        self.send_env = send_env
        self.job = Job()
        self.context: Optional[str] = None   # last CONTEXT seen: decides whether LOG lines may be sent
        self._armed = False
        self.after_job = after_job
        self.in_job = False
        import threading
        self.lock = threading.Lock()

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        """Serve until QUIT or end of input; returns the exit status (always 0)."""
        try:
            while True:
                raw = self.stdin.readline(MAX_IN_LINE + 1)
                if not raw:
                    return 0  # EOF: Grid Engine closed the pipe
                if len(raw) > MAX_IN_LINE and not raw.endswith(b"\n"):
                    self._skip_long_line(raw)
                    continue
                line = raw[:-1] if raw.endswith(b"\n") else raw
                try:
                    with self.lock:
                        if self._handle(line.decode("utf-8", "surrogateescape")):
                            return 0
                    if not self.in_job and line.startswith(b"BEGIN") and \
                            self.after_job is not None and not self.after_job():
                        return 0
                except (BrokenPipeError, ConnectionResetError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug here must not end the JSV
                    self.log(f"jsv: internal error on input {clean_text(repr(line), 120)}: "
                             f"{type(e).__name__}: {clean_text(e, 200)}")
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the peer is gone; nothing left to answer
        except OSError as e:
            self.log(f"jsv: I/O error, stopping: {e}")
            return 0

    def _skip_long_line(self, head: bytes) -> None:
        while True:
            more = self.stdin.readline(MAX_IN_LINE + 1)
            if not more or more.endswith(b"\n"):
                break
        cmd = head[:40].decode("utf-8", "replace")
        self.job.problems.append(f"an input line longer than {MAX_IN_LINE} bytes")
        self._malformed(f"dropped an input line longer than {MAX_IN_LINE} bytes: "
                        f"{clean_text(cmd, 40)}...")

    def _handle(self, line: str) -> bool:
        """One input line; True when the loop should end."""
        cmd, _, rest = line.partition(" ")
        if cmd.endswith("\r"):
            cmd = cmd[:-1]  # a CRLF transcript: still BEGIN, QUIT, START
        if cmd == "PARAM":
            name, _, value = rest.partition(" ")
            if not name:
                self._malformed(f"PARAM without a name: {clean_text(line, 80)!r}")
                return False
            self.job.params[name] = value
            if name == "CONTEXT":
                self.context = value
        elif cmd == "ENV":
            op, _, rest = rest.partition(" ")
            name, _, value = rest.partition(" ")
            if not name or op not in ("ADD", "MOD", "DEL"):
                self._malformed(f"bad ENV line: {clean_text(line, 80)!r}")
                return False
            if op == "DEL":
                self.job.env.pop(name, None)
            else:
                self.job.env[name] = value  # `ENV ADD TERM ` from qmaster: empty value
        elif cmd == "START":
            self.job = Job()
            self.in_job = True
            self._write(["SEND ENV", "STARTED"] if self.send_env else ["STARTED"])
        elif cmd == "BEGIN":
            job, self.job = self.job, Job()
            try:
                self._write(self._answer(job))
            finally:
                self.in_job = False
        elif cmd == "QUIT":
            return True
        elif cmd == "SHOW":
            # jsv_include.sh's debugging aid: list what we got (server context only).
            if self.context == "server":
                self._write([f"LOG INFO {clean_text(f'param {k}={v}')}"
                             for k, v in self.job.params.items()]
                            + [f"LOG INFO {clean_text(f'env {k}={v}')}"
                               for k, v in self.job.env.items()])
        elif line.strip() == "":
            pass
        else:
            self._malformed(f"unknown command {clean_text(cmd, 40)!r}")
        return False

    # ------------------------------------------------------------ answers

    def _answer(self, job: Job) -> List[str]:
        """The lines answering BEGIN: always ending in exactly one RESULT."""
        try:
            if job.problems:
                result = Result.reject("job description was damaged in transit ("
                                       + "; ".join(job.problems) + "); submit it again")
            else:
                result = self._call_verify(job)
            return self._render(result, job.context or self.context)
        except Exception as e:  # noqa: BLE001 - the RESULT must go out
            self.log(f"jsv: cannot render an answer: {type(e).__name__}: {clean_text(e, 200)}")
            return [f"RESULT STATE {REJECT_WAIT} internal error in the job submission "
                    f"verifier; try again later"]

    def _call_verify(self, job: Job) -> Result:
        timeout = self.timeout
        try:
            armed = self._arm(timeout)
            try:
                result = self.verify(job)
            finally:
                if armed:
                    self._disarm()
        except JsvTimeout:
            self.log(f"jsv: verification took longer than {timeout:g} s")
            return self.on_timeout(job)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - never exit between jobs
            self.log(f"jsv: verify failed: {type(e).__name__}: {clean_text(e, 300)}")
            return self.on_error(job, e)
        if not isinstance(result, Result) or result.state not in STATES:
            self.log(f"jsv: verify returned {clean_text(repr(result), 200)}, not a Result")
            return self.on_error(job, TypeError("verify returned no Result"))
        return result

    def _render(self, result: Result, context: Optional[str]) -> List[str]:
        lines: List[str] = []
        if result.state in (ACCEPT, CORRECT):
            # Corrections only matter for jobs that will exist; on REJECT they would
            # only add qmaster parse errors to the user's message.
            try:
                lines = self._corrections(result)
            except ValueError as e:
                self.log(f"jsv: cannot send a correction: {clean_text(e, 200)}")
                result = Result.reject(f"the job cannot be corrected by the job submission "
                                       f"verifier: {e}")
                lines = []
        if context == "server":
            lines.extend(f"LOG {level if level in LOG_LEVELS else 'INFO'} {clean_text(text)}"
                         for level, text in result.logs)
        msg = clean_text(result.message, format_safe=True)
        lines.append(f"RESULT STATE {result.state} {msg}" if msg else f"RESULT STATE {result.state}")
        return lines

    @staticmethod
    def _corrections(result: Result) -> List[str]:
        lines: List[str] = []
        for name, value in result.params:
            lines.append(_line("PARAM", _word(name), _value(value)))
        for op, name, value in result.env:
            if op == "DEL":
                lines.append(f"ENV DEL {_word(name)}")
            elif op in ("ADD", "MOD"):
                lines.append(_line(f"ENV {op}", _word(name), _value(value)))
            else:
                raise ValueError(f"bad ENV operation {clean_text(op, 20)!r}")
        for ln in lines:
            if len(ln.encode("utf-8", "surrogateescape")) >= MAX_OUT_LINE:
                raise ValueError("its attributes would be too long for Grid Engine's JSV "
                                 "protocol")
        return lines

    def _malformed(self, what: str) -> None:
        """Note bad input where it is safe: LOG ERROR to qmaster in server context
        (an unknown command would reject the job), the log file otherwise."""
        self.log(f"jsv: {what}")
        if self.context == "server":
            self._write([f"LOG ERROR sge-image jsv: ignored input: {clean_text(what)}"])

    def _write(self, lines: List[str]) -> None:
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
        self.stdout.write(data)
        self.stdout.flush()

    # ------------------------------------------------------------ timer

    def _on_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._armed:  # a late signal after _disarm must not hit the loop
            self._armed = False
            raise JsvTimeout()

    def _arm(self, timeout: Optional[float]) -> bool:
        """Start the timer; False when there is none (no timeout, or not the main
        thread, where Python cannot receive signals)."""
        if not timeout or timeout <= 0:
            return False
        try:
            signal.signal(signal.SIGALRM, self._on_alarm)
        except ValueError:
            return False
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, timeout)
        return True

    def _disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def _word(name: object) -> str:
    name = str(name)
    if not name or any(c in name for c in " \t\r\n\0"):
        raise ValueError(f"bad attribute name {clean_text(repr(name), 40)}")
    return name


def _value(value: object) -> str:
    # A newline would end the line early and turn the rest into a command; a NUL
    # would cut qmaster's C string. Anything else is passed through as it came.
    text = "" if value is None else str(value)
    if "\n" in text or "\0" in text:
        raise ValueError("a value contains a line break or NUL")
    return text


def _line(prefix: str, name: str, value: str) -> str:
    # An empty value ("PARAM l_hard ") makes qmaster delete the attribute.
    return f"{prefix} {name} {value}"


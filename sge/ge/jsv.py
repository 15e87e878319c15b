"""Job submission verifier: `qsub -l image=NAME` becomes a request for a warm host.

Works as the server JSV (`jsv_url`, one long-lived process per qmaster worker
thread) and as a client JSV (`qsub -jsv`, one process per submission). For a job
that asks for an image it

* checks NAME against the image catalog (bad or unknown: REJECT, one line),
* removes `image=NAME` (or its shortcut `img=NAME`) from `l_hard`/`l_soft`: no
  host reports `image`, so a hard request for it would pend forever,
* asks for the image's warm complex `img_<name>=true` as a soft request, which the
  scheduler uses as its primary sort key (site option `jsv.strict: true`: a hard
  one, so jobs wait for a host that has the image),
* sets `SGE_IMAGE=NAME` in the job environment for the prolog that stages it.

Open Cluster Scheduler (9.x) adds request scopes for parallel jobs: `-scope master -l
image=NAME` arrives as `PARAM master_l_hard` and is mapped like `-l image` (only the
master task's host runs the prolog, so that is where the image is staged); `-scope
slave -l image=NAME` is rejected, because no prolog runs for slave tasks. Global
requests arrive twice there, as `global_l_hard` and `l_hard`; corrections are sent
under the classic names, which OCS applies to the global scope.

Jobs without an image pass unchanged, without the catalog being read at all.

Decisions:

* `SGE_IMAGE` set by the user (`-v SGE_IMAGE=x`, `-V`) without `-l image` is
  treated as an image request: it is validated against the catalog like
  `-l image=x` and mapped the same way, so the prolog never sees a name the
  catalog does not vouch for, and a job submitted from inside an image job with
  `-V` keeps its image. An empty `SGE_IMAGE` is removed. When both are given,
  `-l image` wins and `SGE_IMAGE` is overwritten.
* This also makes a second pass idempotent: after a client JSV mapped the job,
  the server JSV sees `SGE_IMAGE` and the warm complex already there, and
  answers ACCEPT without changes.
* Time: each verification runs under `jsv.timeout` (default 5 s, capped at 8 s
  because qmaster gives up after 10 s and then rejects anyway); a hung server
  JSV would block a qmaster worker thread. On timeout, on a catalog that cannot
  be read and on internal errors the answer is REJECT_WAIT ("try again later")
  rather than ACCEPT: an accepted `-l image=NAME` would pend forever, silently.
* The catalog is re-read at most every RELOAD_INTERVAL seconds, so a long-lived
  server JSV follows catalog edits; if a re-read fails, the last good catalog
  stays in use (and the failure is logged).
"""
from __future__ import annotations

import os
import sys
import time

from ..errors import UnknownImage
from ..names import explain_invalid, is_valid_name, warm_complex
from .jsv_protocol import CORRECT, JsvLoop, Result, clean_text

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import IO, Callable, List, Mapping, Optional, Tuple

    from ..config import Settings
    from .jsv_protocol import Job

# The requestable `image` complex and its shortcut. Grid Engine compares complex
# names without case, so `-l IMAGE=x` is the same request.
IMAGE_COMPLEXES = ("image", "img")
# Open Cluster Scheduler's per-scope hard requests (`qsub -scope master|slave -l ...`).
MASTER_HARD = "master_l_hard"
SLAVE_HARD = "slave_l_hard"
ENV_VAR = "SGE_IMAGE"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 8.0       # qmaster's JSV_CMD_TIMEOUT is 10 s
RELOAD_INTERVAL = 2.0   # seconds between catalog freshness checks
TAG = "sge-image"


class CatalogUnavailable(Exception):
    """The site config or catalog cannot be read right now."""


# ---------------------------------------------------------------- pure mapping

def split_resources(value: str) -> List[str]:
    """`PARAM l_hard a=1,b=2` value -> entries exactly as typed (values may hold `=`)."""
    return value.split(",") if value else []


def resource_name(entry: str) -> str:
    return entry.partition("=")[0].strip().lower()


def is_image_entry(entry: str) -> bool:
    return resource_name(entry) in IMAGE_COMPLEXES


def _show(name: str) -> str:
    return clean_text(repr(name if len(name) <= 40 else name[:40] + "..."), 60)


def map_image(params: Mapping[str, str], env: Mapping[str, str],
              settings: Callable[[], Settings],
              starter: Callable[[], bool] = lambda: False) -> Result:
    """The answer for one job: `params` and `env` as Grid Engine sent them
    (name -> value), `settings()` returning the site Settings (called only when
    the job asks for an image; may raise CatalogUnavailable), `starter()` telling
    whether the kit's starter method runs jobs (called only for an image whose
    catalog entry gives its format). No I/O of its own."""
    hard = split_resources(params.get("l_hard", ""))
    soft = split_resources(params.get("l_soft", ""))
    master = split_resources(params.get(MASTER_HARD, ""))
    if any(is_image_entry(e) for e in split_resources(params.get(SLAVE_HARD, ""))):
        return Result.reject(f"{TAG}: -scope slave -l image: images are staged by the prolog, "
                             f"which runs on the master task's host only; request it with "
                             f"-l image=NAME or -scope master -l image=NAME")
    asked: List[str] = []
    for entries in (hard, soft, master):  # `-soft -l image=x` counts the same as `-l image=x`
        for e in entries:
            if is_image_entry(e):
                value = e.partition("=")[2]
                if value not in asked:
                    asked.append(value)
    from_env = env.get(ENV_VAR)

    if not asked:
        if from_env is None:
            return Result.accept()
        if from_env == "":
            return Result(CORRECT, f"{TAG}: removed the empty {ENV_VAR}",
                          env=[("DEL", ENV_VAR, None)])
        name, origin = from_env, f"{ENV_VAR} in the job environment"
        hint = "; request an image with -l image=NAME"
    elif len(asked) > 1:
        return Result.reject(f"{TAG}: a job can use one image, but this one requests "
                             + " and ".join(_show(n) for n in asked[:3]))
    else:
        name, origin, hint = asked[0], "-l image", ""

    if not is_valid_name(name):
        return Result.reject(f"{TAG}: {origin}: {explain_invalid(name)}{hint}")
    try:
        site = settings()
        image = site.image(name)
        strict = site.jsv.strict
        cap = site.cache.max_size
    except UnknownImage as e:
        return Result.reject(f"{TAG}: {origin}: {e}")
    except CatalogUnavailable as e:
        return Result.reject_wait(f"{TAG}: cannot check image {_show(name)}: the image "
                                  f"catalog is unavailable ({clean_text(e, 200)}); submit "
                                  f"again later or tell your administrator")

    if cap is not None and image.size is not None and image.size > cap:
        # No host could ever stage it: the job would wait or fail on every host.
        from ..units import format_size
        return Result.reject(f"{TAG}: image {_show(name)} is {format_size(image.size)}, larger "
                             f"than the image cache of every host ({format_size(cap)}); ask "
                             f"your administrator to raise cache.max_size")

    if image.format and starter():
        # The catalog says what the image is: a runtime that cannot run it is refused
        # here, in one line, rather than after a download, inside the job.
        from ..runtimes import UnusableRuntime, from_setting
        try:
            runtime = from_setting(site.starter.runtime)
        except UnusableRuntime:
            runtime = None
        if runtime is not None and not runtime.runs(image.format):
            return Result.reject(f"{TAG}: {runtime.refusal(image.name, image.format)}")

    cx = warm_complex(image.name)
    new_hard = [e for e in hard if not is_image_entry(e)]
    new_soft = [e for e in soft if not is_image_entry(e)]
    new_master = [e for e in master if not is_image_entry(e)]
    in_hard = any(resource_name(e) == cx for e in new_hard)
    in_soft = any(resource_name(e) == cx for e in new_soft)
    want = f"{cx}=true"
    if strict:
        if not in_hard:
            new_soft = [e for e in new_soft if resource_name(e) != cx]
            new_hard.append(want)
    elif not (in_hard or in_soft):
        new_soft.append(want)

    changes: List[Tuple[str, object]] = []
    if new_hard != hard:
        changes.append(("l_hard", ",".join(new_hard)))  # "" deletes the list
    if new_soft != soft:
        changes.append(("l_soft", ",".join(new_soft)))
    if new_master != master:
        changes.append((MASTER_HARD, ",".join(new_master)))
    env_changes: List[Tuple[str, str, object]] = [("ADD", ENV_VAR, name)] if env.get(ENV_VAR) != name else []
    if not changes and not env_changes:
        return Result.accept()  # already mapped, e.g. by the client JSV
    kind = "hard" if strict else "soft"
    job = params.get("JOB_ID") or "(new)"
    return Result(CORRECT, f"{TAG}: image {name} prefers hosts that have it cached",
                  params=changes, env=env_changes,
                  logs=[("INFO", f"{TAG} jsv: job {job} of {params.get('USER', '?')}: "
                                 f"image {name} -> {kind} {want}")])


# ---------------------------------------------------------------- the process

class ImageJsv:
    """Holds the lazily loaded settings between jobs of one JSV process."""

    def __init__(self, config_path: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic,
                 launcher: Optional[str] = None) -> None:
        from ..log import Log
        self.config_path = config_path
        self.launcher = launcher
        self.clock = clock
        self.settings: Optional[Settings] = None
        self.checked_at = 0.0
        self.loop: Optional[JsvLoop] = None
        self.log = Log(None, tag="sge-image-jsv")

    def current_settings(self) -> Settings:
        now = self.clock()
        if self.settings is not None:
            if now - self.checked_at < RELOAD_INTERVAL:
                return self.settings
            # Settings.is_stale only stats the source files.
            if not self.settings.is_stale():
                self.checked_at = now
                return self.settings
        try:
            from .. import config
            settings = config.load(self.config_path)
        except Exception as e:  # noqa: BLE001 - ConfigError, OSError, a YAML surprise
            if self.settings is not None:
                self.checked_at = now
                self.log(f"jsv: re-reading the config failed, keeping the last good "
                         f"catalog: {clean_text(e, 300)}")
                return self.settings
            raise CatalogUnavailable(str(e)) from None
        self._adopt(settings, now)
        return settings

    def _adopt(self, settings: Settings, now: float) -> None:
        # The timer may interrupt this at any point: `settings` goes in last, so a
        # cut-short adoption leaves the previous state whole.
        from ..log import Log
        self.log = Log.from_settings(settings, tag="sge-image-jsv")
        if self.loop is not None:
            self.loop.timeout = effective_timeout(settings.jsv.timeout)
        self.checked_at = now
        self.settings = settings

    def verify(self, job: Job) -> Result:
        result = map_image(job.params, job.env, self.current_settings, self.starter_installed)
        if result.state not in ("ACCEPT", "CORRECT"):
            self.log(f"jsv: {result.state} job {job.params.get('JOB_ID', '(new)')} of "
                     f"{job.params.get('USER', '?')}: {clean_text(result.message, 300)}")
        return result

    def starter_installed(self) -> bool:
        """Did `sge-image install --starter` set the kit's starter method on a queue?
        Its install state, beside the launcher, says (a client JSV has no launcher,
        and the prolog refuses the job at staging time instead)."""
        if not self.launcher:
            return False
        import json
        try:
            with open(os.path.join(os.path.dirname(self.launcher), "install-state.json")) as f:
                queues = json.load(f).get("queues", {})
        except (OSError, ValueError, AttributeError):
            return False
        return any("starter_method" in attrs for attrs in queues.values()
                   if isinstance(attrs, dict))

    def on_timeout(self, job: Job) -> Result:
        t = self.loop.timeout if self.loop else DEFAULT_TIMEOUT
        return Result.reject_wait(f"{TAG}: checking the image request took longer than "
                                  f"{t:g} s; submit again later or tell your administrator")

    def on_error(self, job: Job, exc: BaseException) -> Result:
        return Result.reject_wait(f"{TAG}: internal error in the image JSV (details in the "
                                  f"sge-image log); submit again later")


def effective_timeout(configured: Optional[float]) -> float:
    """jsv.timeout in seconds, kept under qmaster's own 10 s; 0 means the cap."""
    if not configured or configured <= 0:
        return MAX_TIMEOUT
    return min(float(configured), MAX_TIMEOUT)


def _private_stdio() -> IO[bytes]:
    """The protocol's own stdout; fds 1 and 2 then point at /dev/null.

    Any stderr line makes Grid Engine reject the job and restart the JSV, and any
    stray stdout line is an unknown command that rejects it too, so nothing but
    the protocol may reach either (not a warning, not a traceback, not a print).
    """
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return out


def jsv_url_names(url: Optional[str], launcher: str) -> bool:
    """Does a global `jsv_url` value (`[script:][user@]/path`) name `launcher`?"""
    if not url or url.lower() == "none":
        return False
    path = url.split(":", 1)[1] if url.startswith("script:") else url
    path = path.split("@", 1)[1] if "@" in path.split("/", 1)[0] else path
    return os.path.realpath(path) == os.path.realpath(launcher)


def configured_url() -> Optional[str]:
    """jsv_url of the global configuration, or None when qconf cannot tell."""
    import subprocess
    try:
        r = subprocess.run(["qconf", "-sconf", "global"], capture_output=True, text=True,
                           timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    for line in r.stdout.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == "jsv_url":
            return parts[1].strip() if len(parts) > 1 else ""
    return None


class Retirement:
    """When this server JSV is no longer wanted, it exits between jobs.

    qmaster leaves the JSV processes it started running after `jsv_url` changes or the
    kit is uninstalled (measured), each pointing at files that may be gone. Between
    jobs this checks, every IDLE_CHECK seconds, that the launcher still exists, and
    every URL_CHECK seconds that the global configuration still names it; after
    each job it checks the launcher. A JSV that is still named never exits on its
    own: qmaster would send the next job to a dead pipe and reject it."""

    IDLE_CHECK = 5.0
    URL_CHECK = 60.0

    def __init__(self, launcher: Optional[str],
                 url: Callable[[], Optional[str]] = configured_url,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.launcher = launcher
        self.url = url
        self.clock = clock
        self.url_checked = clock()

    def launcher_gone(self) -> bool:
        return self.launcher is not None and not os.path.exists(self.launcher)

    def unwanted(self) -> bool:
        if self.launcher is None:
            return False
        if self.launcher_gone():
            return True
        now = self.clock()
        if now - self.url_checked < self.URL_CHECK:
            return False
        self.url_checked = now
        url = self.url()
        return url is not None and not jsv_url_names(url, self.launcher)


def _watch(loop: JsvLoop, retirement: Retirement, log: Callable[[str], None]) -> None:
    """Daemon thread: exit the process while idle once the JSV is unwanted."""
    while True:
        time.sleep(retirement.IDLE_CHECK)
        if loop.in_job or not retirement.unwanted():
            continue
        with loop.lock:
            if loop.in_job:
                continue
            log("jsv: no longer configured (launcher gone or jsv_url changed); exiting")
            os._exit(0)


def run(config_path: Optional[str] = None, launcher: Optional[str] = None) -> int:
    """Serve the JSV protocol on stdin/stdout until QUIT or EOF; returns 0."""
    out = _private_stdio()
    jsv = ImageJsv(config_path, launcher=launcher)
    retirement = Retirement(launcher)
    loop = JsvLoop(jsv.verify, sys.stdin.buffer, out, timeout=DEFAULT_TIMEOUT,
                   on_timeout=jsv.on_timeout, on_error=jsv.on_error,
                   log=lambda msg: jsv.log(msg),
                   after_job=lambda: not retirement.launcher_gone())
    jsv.loop = loop
    if launcher is not None:
        import threading
        threading.Thread(target=_watch, args=(loop, retirement, lambda m: jsv.log(m)),
                         daemon=True).start()
    return loop.run()


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m sge.ge.jsv [--config PATH]` (the CLI's `sge-image jsv` calls run)."""
    import argparse
    p = argparse.ArgumentParser(prog="sge-image jsv",
                                description="Grid Engine JSV for container images")
    p.add_argument("--config", metavar="PATH", help="site config")
    p.add_argument("--launcher", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args.config, args.launcher)


if __name__ == "__main__":
    sys.exit(main())

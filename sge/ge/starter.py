"""The queue's starter method: run the job inside its cached image, pinned.

The runtime and how it is called come from `starter.runtime` (sge/runtimes.py: presets
that know each runtime's binds and conventions, or a site's argv template).

Grid Engine runs the starter as the job owner with argv = the job script (or binary)
and its arguments, intact. The pin is a shared flock on the image's pin file, opened
inheritable and kept across `exec`: the container runtime process holds it for the
job's whole life and the kernel drops it when the job ends, however it ends. Nothing
the job controls is ever passed to a shell: the argv is built as a list.

`exec "$@"` would silently ignore `qsub -S` (the script's shebang wins, measured), so
scripts run through `SGE_STARTER_SHELL_PATH` unless the queue uses unix_behavior.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import List, Mapping, Optional, Sequence

EXIT_NO_IMAGE = 75  # EX_TEMPFAIL: the job's own exit status, never the queue's state


def job_command(argv: Sequence[str], env: Mapping[str, str]) -> List[str]:
    """The command Grid Engine would run without a starter method."""
    if not argv:
        raise ValueError("no job command given")
    shell = env.get("SGE_STARTER_SHELL_PATH")
    mode = env.get("SGE_STARTER_SHELL_START_MODE", "posix_compliant")
    if shell and mode != "unix_behavior" and _is_job_script(argv[0]):
        return [shell, *argv]
    return list(argv)


def _is_job_script(path: str) -> bool:
    """Scripts are spooled by execd as .../job_scripts/<job id>; `-b y` binaries are not."""
    return os.path.basename(os.path.dirname(path)) == "job_scripts"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from ..cluster.hookargs import config_arg
    cfg = config_arg(argv)
    if argv[:1] == ["--config"]:
        argv = argv[2:]
    elif argv and argv[0].startswith("--config="):
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    env = os.environ
    try:
        command = job_command(argv, env)
    except ValueError as e:
        print(f"sge-image starter: {e}", file=sys.stderr)
        return EXIT_NO_IMAGE
    name = env.get("SGE_IMAGE")
    if not name:
        return _exec(command)
    from .. import config
    from ..cache import Cache
    from ..errors import SgeImageError
    try:
        settings = config.load(cfg)
        image = settings.image(name)
        cache = Cache.from_settings(settings)
        path, pin_fd = cache.pin(image)
    except SgeImageError as e:
        print(f"sge-image starter: cannot run the job in image {name!r}: {e}", file=sys.stderr)
        return EXIT_NO_IMAGE
    from ..runtimes import UnusableRuntime, from_setting
    try:
        runtime = from_setting(settings.starter.runtime)
    except UnusableRuntime as e:
        print(f"sge-image starter: {e}", file=sys.stderr)
        return EXIT_NO_IMAGE
    if runtime.formats is not None:
        from ..imageformat import of_cached
        fmt = of_cached(cache.root, path)
        if not runtime.runs(fmt):
            # Normally refused earlier (JSV, prolog); this is the last line of defence.
            print(f"sge-image starter: {runtime.refusal(name, fmt)}", file=sys.stderr)
            return EXIT_NO_IMAGE
    # The pin lives as long as the exec'd runtime, and so as long as the container:
    # ch-run serves the image's FUSE mount itself and exits when its command does.
    os.set_inheritable(pin_fd, True)
    os.environ["SGE_IMAGE_PATH"] = path
    if not os.environ.get("USER"):
        # ch-run refuses to start without it ("$USER not set"); Grid Engine sets it for
        # batch jobs, but not every way of starting a job does.
        import pwd
        os.environ["USER"] = pwd.getpwuid(os.getuid()).pw_name
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = os.environ.get("HOME") or "/"
    return _exec(runtime.argv(path, command, os.environ, cwd, settings.starter.binds))


def _exec(command: List[str]) -> int:
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"sge-image starter: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())

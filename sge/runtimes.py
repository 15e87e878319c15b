"""Container runtimes for the starter method: how each one is asked to run a job.

`starter.runtime` names a preset (`apptainer`, `singularity`, `charliecloud`) or gives
an argv template: `{image}` where the image path goes, `{command}` where the job's
command goes (appended when absent). The old list form without `{image}` (`[apptainer,
exec]`: RUNTIME... IMAGE JOB...) keeps its meaning.

A preset knows its runtime's conventions, so that the job finds inside the container
what Grid Engine gave it outside: its working directory, `$HOME`, `$TMPDIR`, its
script (in execd's spool), its spool directory (`$PE_HOSTFILE` lives there), the
`SGE_*`/`JOB_ID`/`SGE_TASK_ID` environment (every runtime here passes the environment
through), and an exit status or death by a signal that `qacct` reports as it would
without a container. Each also knows the image formats it runs (sge/imageformat.py), so
a mismatch is refused before the job runs rather than failing inside it.

Everything here is a pure function of its arguments except for `os.path.isdir` checks
on the host paths to bind: the argv is built as a list, never through a shell.
"""
from __future__ import annotations

import os
import posixpath

from .imageformat import SIF, SQUASHFS, of_cached

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

    Mount = Tuple[str, str]   # (host path, path inside the container)

IMAGE = "{image}"
COMMAND = "{command}"
PRESETS = ("apptainer", "singularity", "charliecloud")

# Which formats each runtime runs. Apptainer and Singularity mount SIF and plain
# SquashFS images; Charliecloud 0.31's ch-run mounts plain SquashFS (or a directory)
# through libsquashfuse, which reads a superblock at offset 0 and so cannot open a SIF.
FORMATS: Dict[str, FrozenSet[str]] = {
    "apptainer": frozenset({SIF, SQUASHFS}),
    "singularity": frozenset({SIF, SQUASHFS}),
    "charliecloud": frozenset({SQUASHFS}),
}
_EXECUTABLE = {"apptainer": "apptainer", "singularity": "singularity", "charliecloud": "ch-run"}

# Charliecloud binds only onto directories that exist in the (read-only) image; ch-image
# makes /mnt/0-9 in every image it builds for exactly this. The kit uses three of them.
CH_CWD_MOUNT = "/mnt/0"       # the job's working directory when no other bind holds it
CH_SCRIPT_MOUNT = "/mnt/1"    # execd's job_scripts directory
CH_SPOOL_MOUNT = "/mnt/2"     # the job's spool directory ($SGE_JOB_SPOOL_DIR)
# ch-run 0.31 exits 1 when its command dies by a signal (measured: `kill -9 $$` -> 1),
# where Grid Engine would record 128+N. A shell inside the image runs the command as a
# child and exits with the status it saw, so qacct reads 137 for a SIGKILL, as without
# a container. (A signal sent to the whole job, such as qdel's, ends ch-run itself and
# is recorded as such.)
CH_STATUS_SHELL = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]


class UnusableRuntime(ValueError):
    """A runtime setting or a request it cannot serve; the message is one line."""


class Runtime:
    """One configured runtime: `name` (a preset, or `custom`), the formats it runs
    (None: unknown, for templates naming another program) and how to build its argv."""

    def __init__(self, name: str, template: Sequence[str],
                 formats: Optional[FrozenSet[str]]) -> None:
        self.name = name
        self.template = tuple(template)
        self.formats = formats

    def runs(self, fmt: str) -> bool:
        """False only when this runtime certainly cannot run an image of format `fmt`."""
        return self.formats is None or fmt not in (SIF, SQUASHFS) or fmt in self.formats

    def refusal(self, image_name: str, fmt: str) -> str:
        """The one-line explanation for an image this runtime cannot run."""
        can = " or ".join(sorted(self.formats or ()))
        hint = (" (publish it as plain SquashFS, which every runtime here runs)" if fmt == SIF
                else "")
        return (f"image {image_name!r} is a {_label(fmt)} image, and the site's container "
                f"runtime {self.name} runs only {can} images{hint}")

    def argv(self, image: str, command: Sequence[str], env: Mapping[str, str], cwd: str,
             binds: Sequence[str] = ()) -> List[str]:
        if self.name == "charliecloud":
            return charliecloud_argv(image, command, env, cwd, binds, self.template[0])
        if self.name in ("apptainer", "singularity"):
            return apptainer_argv(image, command, env, cwd, binds, self.template[0])
        return template_argv(self.template, image, command)

    def __repr__(self) -> str:
        return f"Runtime({self.name!r}, {list(self.template)!r})"


def _label(fmt: str) -> str:
    return {SIF: "SIF", SQUASHFS: "SquashFS"}.get(fmt, fmt)


def from_setting(value: Sequence[str]) -> Runtime:
    """`starter.runtime` (a word list) -> Runtime; raises UnusableRuntime when unusable."""
    words = list(value)
    if not words:
        raise UnusableRuntime("starter.runtime is empty")
    if len(words) == 1 and words[0] in PRESETS:
        return Runtime(words[0], [_EXECUTABLE[words[0]]], FORMATS[words[0]])
    if words[0] in PRESETS and words[0] != _EXECUTABLE[words[0]]:
        # `charliecloud` is no program: `[charliecloud, --flag]` is a mistake, said so
        raise UnusableRuntime(f"starter.runtime: the preset {words[0]!r} takes no arguments; "
                            f"give an argv template with {IMAGE} and {COMMAND} instead")
    if words.count(COMMAND) > 1 or sum(w.count(IMAGE) for w in words) > 1:
        raise UnusableRuntime(f"starter.runtime: {IMAGE} and {COMMAND} may each appear once")
    if COMMAND in words and not _has_image(words):
        raise UnusableRuntime(f"starter.runtime: a template with {COMMAND} needs {IMAGE} too")
    program = posixpath.basename(words[0])
    formats = next((FORMATS[p] for p, exe in _EXECUTABLE.items() if exe == program), None)
    return Runtime("custom", words, formats)


def template_argv(template: Sequence[str], image: str, command: Sequence[str]) -> List[str]:
    """A custom template; the legacy form (no `{image}`) is RUNTIME... IMAGE COMMAND..."""
    words = list(template)
    if not _has_image(words):
        return [*words, image, *command]
    out: List[str] = []
    for w in words:
        if w == COMMAND:
            out.extend(command)
        else:
            out.append(w.replace(IMAGE, image))
    if COMMAND not in words:
        out.extend(command)
    return out


# ------------------------------------------------------------------ helpers

def _has_image(words: Sequence[str]) -> bool:
    return any(IMAGE in w for w in words)


def job_dirs(command: Sequence[str], env: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """(execd's job_scripts directory if the command runs a spooled script, the job's
    spool directory): both are host paths the job reads and a container must show."""
    scripts = None
    for word in command[:2]:
        d = posixpath.dirname(word)
        if posixpath.basename(d) == "job_scripts":
            scripts = d
            break
    spool = env.get("SGE_JOB_SPOOL_DIR") or None
    return scripts, spool


def _under(path: str, top: str) -> Optional[str]:
    """`path` relative to `top` ("" for top itself), or None if outside it."""
    path, top = posixpath.normpath(path), posixpath.normpath(top)
    if path == top:
        return ""
    if top == "/":
        return path[1:]
    return path[len(top) + 1:] if path.startswith(top + "/") else None


def translate(path: str, mounts: Sequence[Mount]) -> Optional[str]:
    """Where host `path` appears inside the container, by the mount holding it most
    closely (the longest host prefix), or None if no mount shows it."""
    best: Optional[Tuple[int, str]] = None
    for host, guest in mounts:
        rel = _under(path, host)
        if rel is not None and (best is None or len(host) > best[0]):
            best = (len(host), posixpath.join(guest, rel) if rel else guest)
    return best[1] if best else None


def parse_bind(spec: str) -> Mount:
    src, _, dst = spec.partition(":")
    return src, dst or src


# ------------------------------------------------------------------ presets

def charliecloud_argv(image: str, command: Sequence[str], env: Mapping[str, str], cwd: str,
                      binds: Sequence[str] = (), program: str = "ch-run") -> List[str]:
    """`ch-run [binds] -c DIR IMAGE -- /bin/sh -c ... COMMAND`.

    ch-run binds host $TMPDIR (else /tmp) at /tmp and unsets TMPDIR; `--home` binds $HOME
    at /home/$USER and sets HOME to it. It can bind only onto directories the read-only
    image already has, so the job's script directory, spool directory and (when no bind
    shows it) working directory go onto /mnt/1, /mnt/2 and /mnt/0, and the variables
    naming them are set to the paths inside.
    """
    argv = [program]
    sets: List[str] = []
    mounts: List[Mount] = []
    for spec in binds:
        src, dst = parse_bind(spec)
        if os.path.isdir(src):
            argv += ["-b", f"{src}:{dst}"]
            mounts.append((src, dst))
    home, user = env.get("HOME", ""), env.get("USER", "")
    if home not in ("", "/") and user and os.path.isdir(home) \
            and not any(_under(dst, "/home") is not None for _, dst in mounts):
        argv.append("--home")
        mounts.append((home, f"/home/{user}"))
    tmp = env.get("TMPDIR")
    if tmp and os.path.isdir(tmp):
        mounts.append((tmp, "/tmp"))
        sets.append("TMPDIR=/tmp")
    else:
        mounts.append(("/tmp", "/tmp"))
    scripts, spool = job_dirs(command, env)
    if scripts and translate(scripts, mounts) is None:
        argv += ["-b", f"{scripts}:{CH_SCRIPT_MOUNT}"]
        mounts.append((scripts, CH_SCRIPT_MOUNT))
    if spool and os.path.isdir(spool):
        if translate(spool, mounts) is None:
            argv += ["-b", f"{spool}:{CH_SPOOL_MOUNT}"]
            mounts.append((spool, CH_SPOOL_MOUNT))
        for var in ("SGE_JOB_SPOOL_DIR", "PE_HOSTFILE"):
            inside = translate(env[var], mounts) if env.get(var) else None
            if inside and inside != env[var]:
                sets.append(f"{var}={inside}")
    inside_cwd = translate(cwd, mounts)
    if inside_cwd is None:
        argv += ["-b", f"{cwd}:{CH_CWD_MOUNT}"]
        mounts.append((cwd, CH_CWD_MOUNT))
        inside_cwd = CH_CWD_MOUNT
    argv += ["-c", inside_cwd]
    if sets:
        argv.append("--env-no-expand")  # a `$` in a path is a character, not a variable
        argv += [f"--set-env={s}" for s in sets]
    job = [translate(w, mounts) or w if i < 2 and _is_host_file(w) else w
           for i, w in enumerate(command)]
    return [*argv, image, "--", *CH_STATUS_SHELL, *job]


def _is_host_file(word: str) -> bool:
    return word.startswith("/") and os.path.isfile(word)


def apptainer_argv(image: str, command: Sequence[str], env: Mapping[str, str], cwd: str,
                   binds: Sequence[str] = (), program: str = "apptainer") -> List[str]:
    """`apptainer exec --bind ... --pwd DIR IMAGE COMMAND`.

    Apptainer (and Singularity) bind $HOME, /tmp and the working directory themselves,
    create missing mount points, pass the environment through, forward signals to the
    container and return its exit status. Execd's spool (the job script and the job's
    spool directory) and a $TMPDIR outside /tmp are bound at their own paths, so every
    path the job was given stays valid.
    """
    argv = [program, "exec"]
    paths: List[str] = []
    for spec in binds:
        src, dst = parse_bind(spec)
        if os.path.isdir(src):
            paths.append(spec if dst != src else src)
    scripts, spool = job_dirs(command, env)
    tmp = env.get("TMPDIR")
    for extra in (scripts, spool, tmp if tmp and _under(tmp, "/tmp") is None else None):
        if extra and os.path.isdir(extra) and extra not in paths:
            paths.append(extra)
    for p in paths:
        argv += ["--bind", p]
    argv += ["--pwd", cwd]
    return [*argv, image, *command]


# ------------------------------------------------------------------ refusals

def kit_starter_runs(spool: Optional[str]) -> bool:
    """Will the job in execd spool directory `spool` start through the kit's starter?

    execd writes the queue's `prolog=` and `starter_method=` into the job's `config`
    file before the prolog runs; the kit installs both launchers in one directory."""
    if not spool:
        return False
    values: Dict[str, str] = {}
    try:
        with open(posixpath.join(spool, "config"), errors="replace") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if key in ("prolog", "starter_method") and sep:
                    values[key] = value
    except OSError:
        return False

    def path_of(value: str) -> str:
        word = value.split()[0] if value.split() else ""
        return word.split("@", 1)[1] if "@" in word.split("/", 1)[0] else word
    starter = path_of(values.get("starter_method", "none"))
    prolog = path_of(values.get("prolog", "none"))
    return starter.startswith("/") and prolog.startswith("/") and \
        posixpath.dirname(starter) == posixpath.dirname(prolog)


def staging_refusal(name: str, path: str, runtime_setting: Sequence[str], cache_root: str,
                    spool: Optional[str]) -> Optional[str]:
    """For the prolog, after staging: why the job's starter could not run the image it
    got (one line), or None. A job without the kit's starter runs whatever it likes."""
    try:
        runtime = from_setting(runtime_setting)
    except UnusableRuntime:
        return None  # the starter says so itself
    if runtime.formats is None or runtime.formats >= {SIF, SQUASHFS}:
        return None  # nothing to refuse: no file is read on this path
    if not kit_starter_runs(spool):
        return None
    fmt = of_cached(cache_root, path)
    return None if runtime.runs(fmt) else runtime.refusal(name, fmt)

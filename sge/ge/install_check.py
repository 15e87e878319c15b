"""`sge-image install --check`: run every launcher as the user Grid Engine will run it as.

Issue it guards against: a kit installed from a virtualenv whose interpreter the
qmaster's admin user cannot execute (built from a Python under root's home) was
accepted, and afterwards every `qsub` on the cluster failed with "JSV stderr: ...
Permission denied". So before install points Grid Engine at a launcher, the launcher
runs once, for real, as its user:

- the JSV as the qmaster's admin user (`admin_user` in the cell's bootstrap file), with
  a real protocol exchange for a job that requests a catalog image;
- the load sensor as root, one report and `quit`;
- the prolog as root, for a name the catalog does not have (exit 100: the config and
  catalog were read, nothing is staged);
- the starter as an ordinary user, running `true`.

When one fails, `denied_component` names the first path component that user cannot
search, read or execute, from the permission bits (a pure function of `stat`).
"""
from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from typing import TYPE_CHECKING

import sge

if TYPE_CHECKING:
    from typing import (
        AbstractSet,
        Callable,
        Collection,
        Dict,
        List,
        Mapping,
        Optional,
        Sequence,
        Tuple,
    )

    from ..config import Settings

    # (a path, what the user may not do with it)
    Denied = Tuple[str, str]
    Runner = Callable[[str, str, Settings, str], Optional[str]]

CHECK_IMAGE = "sge-image-install-check"  # a valid name no catalog is expected to have
TIMEOUT = 60
# The sensor's supervisor restarts a crashing sensor forever (by design: execd breaks
# when its sensor exits), so a broken one shows as no report within this time.
SENSOR_TIMEOUT = 20
ORDINARY_USER = "nobody"


class Failure:
    def __init__(self, hook: str, user: str, message: str,
                 component: Optional[Denied] = None) -> None:
        self.hook, self.user, self.message, self.component = hook, user, message, component

    def __str__(self) -> str:
        where = f"; {self.user} cannot {self.component[1]} {self.component[0]}" if self.component else ""
        return f"{self.hook} launcher as {self.user}: {self.message}{where}"


# ---------------------------------------------------------------- pure permission logic

def may(st_mode: int, st_uid: int, st_gid: int, uid: int, gids: AbstractSet[int],
        want: Collection[str]) -> bool:
    """Unix permission check of one inode for (uid, gids); want holds some of r, w, x."""
    if uid == 0:
        # root: everything but executing a file no one may execute
        return "x" not in want or stat.S_ISDIR(st_mode) or bool(st_mode & 0o111)
    if st_uid == uid:
        bits = (st_mode >> 6) & 7
    elif st_gid in gids:
        bits = (st_mode >> 3) & 7
    else:
        bits = st_mode & 7
    need = (4 if "r" in want else 0) | (2 if "w" in want else 0) | (1 if "x" in want else 0)
    return bits & need == need


def denied_component(path: str, uid: int, gids: AbstractSet[int], want: str = "r",
                     lstat: Callable[[str], os.stat_result] = os.lstat,
                     readlink: Callable[[str], str] = os.readlink) -> Optional[Denied]:
    """The first component on the way to `path` (following symlinks as the kernel does)
    that (uid, gids) may not search, or the file itself if it may not `want` it.
    -> (path, verb) or None."""
    seen = 0
    todo = [p for p in os.path.abspath(path).split("/") if p]
    cur = "/"
    while todo:
        part = todo.pop(0)
        try:
            st = lstat(cur)
        except OSError:
            return (cur, "find")
        if not may(st.st_mode, st.st_uid, st.st_gid, uid, gids, "x"):
            return (cur, "search (x)")
        nxt = os.path.join(cur, part)
        try:
            st = lstat(nxt)
        except OSError:
            return (nxt, "find")
        if stat.S_ISLNK(st.st_mode):
            seen += 1
            if seen > 40:
                return (nxt, "resolve (symlink loop)")
            target = readlink(nxt)
            base = "/" if target.startswith("/") else cur
            todo = [p for p in target.split("/") if p] + todo
            cur = base
            # `..` in a link target: normalise as we go
            continue
        if part == "..":
            cur = os.path.dirname(cur) or "/"
            continue
        if part == ".":
            continue
        cur = nxt
    try:
        st = lstat(cur)
    except OSError:
        return (cur, "find")
    verbs = {"r": "read", "x": "execute", "rx": "read and execute"}
    if not may(st.st_mode, st.st_uid, st.st_gid, uid, gids, set(want)):
        return (cur, verbs.get(want, want))
    return None


# ---------------------------------------------------------------- users

def admin_user() -> str:
    """The qmaster's admin user from $SGE_ROOT's cell's bootstrap file (root when unset)."""
    if not os.environ.get("SGE_ROOT"):
        return "root"
    return bootstrap_admin_user() or "root"


def bootstrap_admin_user() -> Optional[str]:
    """The admin user the cell's bootstrap names, or None when no bootstrap is found.
    Without SGE_ROOT the qconf on PATH still reaches its cell (Debian's packages build
    in /var/lib/gridengine; a classic install has SGE_ROOT/bin/ARCH/qconf), so those
    are tried too: a dry run without the environment must not lose what depends on it
    (it once dropped the interactive-queue warning)."""
    cell = os.environ.get("SGE_CELL", "default")
    roots = [os.environ.get("SGE_ROOT", "")]
    if not roots[0]:
        qconf_bin = shutil.which("qconf")
        if qconf_bin:
            roots.append(os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.realpath(qconf_bin)))))
        roots.append("/var/lib/gridengine")
    for root in filter(None, roots):
        try:
            with open(os.path.join(root, cell, "common", "bootstrap")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2 and parts[0] == "admin_user":
                        return "root" if parts[1].lower() == "none" else parts[1]
                return "root"
        except OSError:
            continue
    return None


def _ids(user: str) -> Tuple[int, int, AbstractSet[int]]:
    pw = pwd.getpwnam(user)
    gids = set(os.getgrouplist(user, pw.pw_gid))
    return pw.pw_uid, pw.pw_gid, gids


def _as_user(user: str, cmd: Sequence[str]) -> List[str]:
    """argv running `cmd` as `user` with that user's groups (setpriv: no PAM session)."""
    if user == "root" or os.geteuid() != 0:
        return list(cmd)
    if pwd.getpwnam(user).pw_uid == os.geteuid():
        return list(cmd)
    return ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}",
            "--init-groups", "--", *cmd]


# ---------------------------------------------------------------- the checks

def check(settings: Settings, launcher_texts: Mapping[str, str], python: str, hooks_dir: str,
          starter: bool = False, jsv: bool = True, starter_user: str = ORDINARY_USER,
          host: Optional[str] = None) -> List[Failure]:
    """Run each launcher the install would point Grid Engine at; -> [Failure].

    The launchers run from a private copy in a world-searchable temp dir, so nothing
    of the real hooks dir changes when a check fails."""
    host = host or socket.gethostname().split(".")[0]
    failures: List[Failure] = []
    tmp = tempfile.mkdtemp(prefix="sge-image-check.")
    try:
        os.chmod(tmp, 0o755)
        paths: Dict[str, str] = {}
        for name, text in launcher_texts.items():
            p = os.path.join(tmp, name)
            with open(p, "w") as f:
                f.write(text)
            os.chmod(p, 0o755)
            paths[name] = p
        plan: List[Tuple[str, str, Runner]] = [("loadsensor", "root", _run_sensor),
                                                ("prolog", "root", _run_prolog),
                                                ("epilog", "root", _run_epilog)]
        if jsv:
            plan.append(("jsv", admin_user(), _run_jsv))
        if starter:
            plan.append(("starter", starter_user, _run_starter))
        for hook, user, runner in plan:
            # Grid Engine runs the real launcher, in the hooks dir: the user must reach it.
            reach = _reachable(hooks_dir, user)
            if reach:
                failures.append(Failure(hook, user, f"cannot reach the hooks dir {hooks_dir}",
                                        reach))
                continue
            try:
                message = runner(paths[hook], user, settings, host)
            except subprocess.TimeoutExpired:
                message = f"no answer within {TIMEOUT}s"
            except (OSError, KeyError) as e:
                message = f"cannot run: {e}"
            if message:
                failures.append(Failure(hook, user, message,
                                        _blame(user, hook, hooks_dir, python, settings)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def _reachable(hooks_dir: str, user: str) -> Optional[Denied]:
    """None, or the component of the hooks dir (or of its nearest existing ancestor,
    before install creates it) that `user` cannot search."""
    path = hooks_dir
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        uid, _, gids = _ids(user)
    except KeyError:
        return None  # the run itself then fails, naming the user
    return denied_component(path, uid, gids, "x")


def _blame(user: str, hook: str, hooks_dir: str, python: str,
           settings: Settings) -> Optional[Denied]:
    """The first path the user cannot use, among those the launcher needs."""
    try:
        uid, _, gids = _ids(user)
    except KeyError:
        return None
    need = [(python, "x")]
    real = os.path.realpath(python)
    if real != python:
        need.append((real, "x"))
    need.append((os.path.join(os.path.dirname(sge.__file__), "__init__.py"), "r"))
    if settings.path:
        need.append((settings.path, "r"))
    for path, want in need:
        found = denied_component(path, uid, gids, want)
        if found:
            return found
    return None


def _run(user: str, cmd: Sequence[str], stdin_text: str,
         env_extra: Optional[Mapping[str, str]] = None,
         timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for k in ("SGE_ROOT", "SGE_CELL"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(env_extra or {})
    # Its own process group: on a timeout the whole tree goes (a failing sensor's
    # supervisor would otherwise keep restarting it for ever).
    p = subprocess.Popen(_as_user(user, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd="/",
                         start_new_session=True)
    try:
        out, err = p.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _tail(text: Optional[str]) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _run_jsv(path: str, user: str, settings: Settings, host: str) -> Optional[str]:
    name = next(iter(sorted(settings.images)), None)
    job = ["START", "PARAM VERSION 1.0", "PARAM CONTEXT server", "PARAM CLIENT qmaster",
           "PARAM USER root", "PARAM GROUP root", "PARAM CMDNAME check.sh", "PARAM CMDARGS 0"]
    if name:
        job.append(f"PARAM l_hard image={name}")
    job += ["BEGIN", "QUIT"]
    r = _run(user, ["/bin/sh", "-c", shlex.quote(path)], "\n".join(job) + "\n")
    results = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.stderr.strip():
        return f"wrote to stderr (Grid Engine would reject every job): {_tail(r.stderr)}"
    if "STARTED" not in r.stdout.splitlines() or not results:
        return f"no JSV protocol answer (exit {r.returncode})"
    state = results[-1].split()[2] if len(results[-1].split()) > 2 else ""
    if name and state != "CORRECT":
        return f"answered {results[-1]!r} for a job requesting image {name}"
    return None


def _run_sensor(path: str, user: str, settings: Settings, host: str) -> Optional[str]:
    try:
        r = _run(user, ["/bin/sh", "-c", shlex.quote(path)], "\nquit\n", {"HOST": host},
                 timeout=SENSOR_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no load report within {SENSOR_TIMEOUT}s (the sensor keeps failing)"
    lines = r.stdout.splitlines()
    if r.returncode != 0 or "begin" not in lines or "end" not in lines:
        return (f"no load report (exit {r.returncode}"
                f"{': ' + _tail(r.stderr) if r.stderr.strip() else ''})")
    return None


def _run_prolog(path: str, user: str, settings: Settings, host: str) -> Optional[str]:
    name = CHECK_IMAGE
    while name in settings.images:
        name += "x"
    r = _run(user, [path], "", {"SGE_IMAGE": name, "JOB_ID": "0"})
    if r.returncode != 100 or "catalog" not in r.stdout:
        return (f"exit {r.returncode} for an image the catalog lacks, expected 100"
                f"{': ' + _tail(r.stdout + r.stderr) if (r.stdout + r.stderr).strip() else ''}")
    return None


def _run_epilog(path: str, user: str, settings: Settings, host: str) -> Optional[str]:
    # The epilog answers 0 whatever happens, so its output is the only sign of trouble.
    r = _run(user, [path], "", {"SGE_IMAGE": CHECK_IMAGE, "JOB_ID": "0", "SGE_TASK_ID": "1"})
    if r.returncode != 0 or (r.stdout + r.stderr).strip():
        return (f"exit {r.returncode}"
                f"{': ' + _tail(r.stdout + r.stderr) if (r.stdout + r.stderr).strip() else ''}")
    return None


def _run_starter(path: str, user: str, settings: Settings, host: str) -> Optional[str]:
    r = _run(user, [path, "/bin/true"], "")
    if r.returncode != 0:
        return f"exit {r.returncode} running /bin/true{': ' + _tail(r.stderr) if r.stderr.strip() else ''}"
    return None

"""`sge-image install` / `uninstall`: wire the kit into a cluster through qconf only.

What install changes, each step only when it differs from what is there (so a second
run changes nothing), and recorded in `<hooks dir>/install-state.json` so uninstall
restores exactly what was there before:
- launchers in the hooks dir: small scripts naming this interpreter and this config,
  because Grid Engine's load_sensor, jsv_url and starter_method take a bare path;
- complexes: `image` (RESTRING, so qmaster accepts `-l image=...` before the JSV sees
  it), one BOOL per catalog image, free cache space and the sensor's timestamp,
  merged into the list (`qconf -Mc` replaces the whole list);
- `load_sensor` in each exec host's configuration, then the global configuration
  re-applied so running execds notice (they ignore a host config added while they run);
- `prolog root@...` and `epilog root@...` (which ends a job's claim on its image,
  sge/claims.py; a queue's own epilog is left alone and the load sensor's sweep ends
  those claims instead), and optionally `starter_method`, in the chosen queues;
- `jsv_url` in the global configuration.
"""
from __future__ import annotations

import functools
import json
import os
import pwd
import shlex
import sys
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..agent import auth, user
from ..cluster.complexes import FREE_COMPLEX, LIST_COMPLEX, ROOM_COMPLEX, TIME_COMPLEX
from ..config import config_path
from ..fsutil import atomic_write
from . import engine_quirks, install_check, qconf

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO

    from ..config import Settings

    State = Dict[str, Any]   # install-state.json

STATE_FILE = "install-state.json"
STATE_VERSION = 1


def kit_complexes(settings: Settings) -> Dict[str, Dict[str, str]]:
    """name -> complex row the kit wants, fixed ones first."""
    rows = [
        ("image", "img", "RESTRING", "==", "YES", "NO", "NONE", "0"),
        (FREE_COMPLEX, "imgfree", "MEMORY", "<=", "YES", "NO", "0", "0"),
        (ROOM_COMPLEX, "imgroom", "MEMORY", "<=", "YES", "NO", "0", "0"),
        (TIME_COMPLEX, "imgtime", "INT", "<=", "NO", "NO", "0", "0"),
    ]
    if settings.sensor.list_complex:
        rows.append((LIST_COMPLEX, "imgs", "RESTRING", "==", "YES", "NO", "NONE", "0"))
    for name in sorted(settings.images):
        cx = settings.images[name].complex
        rows.append((cx, cx, "BOOL", "==", "YES", "NO", "FALSE", "0"))
    return {r[0]: dict(zip(qconf.COMPLEX_COLUMNS, r)) for r in rows}


def launchers(settings: Settings, python: str, hooks_dir: str) -> Dict[str, str]:
    """Launcher file name -> content."""
    cfg = shlex.quote(os.path.abspath(settings.path or config_path()))
    py = shlex.quote(python)
    kit = _kit_dir()
    # The version in every launcher: an upgrade rewrites them all, and a changed file is
    # what makes qmaster restart its JSVs and execd its load sensor (and so the agent)
    # on the new code; an unchanged launcher would leave the old code running.
    head = (f"#!/bin/sh\n# Written by `sge-image install` (sge-image-kit {__version__}); "
            f"re-run it rather than editing this file.\n")
    return {
        "prolog": head + f"exec {shlex.quote(_wrapper(kit, 'prolog', 'sge-image-prolog'))} "
                         f"{py} --config {cfg} \"$@\"\n",
        "epilog": head + f"exec {shlex.quote(_wrapper(kit, 'epilog', 'sge-image-epilog'))} "
                         f"{py} --config {cfg}\n",
        "loadsensor": head + f"exec {shlex.quote(_wrapper(kit, 'loadsensor', 'sge-image-loadsensor'))} "
                             f"{py} --config {cfg}\n",
        # --launcher "$0": the JSV exits once its launcher is gone (uninstall), since
        # qmaster leaves the processes it started running (issue 9).
        "jsv": head + f"exec {py} -I -m sge.cli --config {cfg} jsv --launcher \"$0\"\n",
        "starter": head + f"exec {py} -I -m sge.ge.starter --config {cfg} -- \"$@\"\n",
    }


def _kit_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wrapper(kit: str, folder: str, name: str) -> str:
    """The thin executable from the source tree, else the copy pip put beside python."""
    src = os.path.join(kit, folder, name)
    if os.path.exists(src):
        return src
    return os.path.join(os.path.dirname(sys.executable), name)


class Plan:
    """Ordered changes; printed by --dry-run, applied otherwise."""

    def __init__(self, dry_run: bool, out: TextIO) -> None:
        self.dry_run = dry_run
        self.out = out
        self.changes = 0

    def do(self, description: str, action: Callable[[], object]) -> None:
        self.changes += 1
        self.out.write(("would " if self.dry_run else "") + description + "\n")
        if not self.dry_run:
            action()

    def same(self, description: str) -> None:
        self.out.write(f"unchanged: {description}\n")


def _check_manager() -> None:
    qconf.require_qconf()
    user = pwd.getpwuid(os.geteuid()).pw_name
    if user not in qconf.managers():
        raise qconf.QconfError(f"user {user!r} is not a Grid Engine manager "
                               f"(qconf -am {user}, as a manager, makes it one)")


def _load_state(hooks_dir: str) -> State:
    try:
        with open(os.path.join(hooks_dir, STATE_FILE)) as f:
            state: State = json.load(f)
        if state.get("version") == STATE_VERSION:
            return state
    except (OSError, ValueError):
        pass
    return {"version": STATE_VERSION, "complexes": [], "hosts": {}, "queues": {}, "jsv": None}


def _save_state(hooks_dir: str, state: State) -> None:
    # uninstall restores the cluster from this file: it must survive a crash whole
    atomic_write(os.path.join(hooks_dir, STATE_FILE), json.dumps(state, indent=1, sort_keys=True))


def check(settings: Settings, hooks_dir: str, python: Optional[str] = None, starter: bool = False,
          jsv: bool = True, out: TextIO = sys.stdout) -> int:
    """Run every launcher as its Grid Engine user (sge/ge/install_check.py); 0 or 2."""
    hooks_dir = os.path.abspath(hooks_dir)
    python = python or sys.executable
    failures = install_check.check(settings, launchers(settings, python, hooks_dir), python,
                                   hooks_dir, starter=starter, jsv=jsv)
    for f in failures:
        out.write(f"check failed: {f}\n")
    if not failures:
        hooks = ["loadsensor", "prolog", "epilog"] + (["jsv"] if jsv else []) + (["starter"] if starter else [])
        out.write(f"check passed: {', '.join(hooks)} launchers run as their Grid Engine users\n")
    return 2 if failures else 0


def install(settings: Settings, hooks_dir: str, queues: Sequence[str] = ("all.q",),
            hosts: Optional[Iterable[str]] = None, starter: bool = False, jsv: bool = True,
            sync: bool = False, dry_run: bool = False, python: Optional[str] = None,
            out: TextIO = sys.stdout, run_check: bool = True) -> int:
    _check_manager()
    hooks_dir = os.path.abspath(hooks_dir)
    python = python or sys.executable
    plan = Plan(dry_run, out)
    state = _load_state(hooks_dir)

    # 0. Every launcher runs as its user before Grid Engine is pointed at it: a JSV
    # sgeadmin cannot execute stops every qsub on the cluster (issue 9).
    if run_check and check(settings, hooks_dir, python, starter, jsv, out) != 0:
        raise qconf.QconfError("install refused: a launcher would fail as its Grid Engine "
                               "user (see above); nothing was changed")

    # 1. Launchers.
    wanted = launchers(settings, python, hooks_dir)
    if not os.path.isdir(hooks_dir):
        plan.do(f"create {hooks_dir}", lambda: os.makedirs(hooks_dir, mode=0o755))
    for fn, text in wanted.items():
        path = os.path.join(hooks_dir, fn)
        try:
            with open(path) as f:
                current = f.read()
        except OSError:
            current = None
        if current == text:
            plan.same(f"launcher {path}")
        else:
            plan.do(f"write launcher {path}", functools.partial(_write_exec, path, text))

    # 1b. The node agent's signing key (sge/agent/auth.py): root-only, made once;
    # and the server's own system user (sge/agent/user.py).
    _install_agent_key(settings, state, plan, hooks_dir)
    _install_agent_user(settings, state, plan, hooks_dir)

    # 2. Complexes.
    _install_complexes(settings, state, plan, sync)

    # 3. Load sensor in each exec host's configuration.
    sensor = os.path.join(hooks_dir, "loadsensor")
    touched_hosts = False
    for host in (list(hosts) if hosts else qconf.exec_hosts()):
        conf = qconf.show_conf(host)
        current = (conf or {}).get("load_sensor")
        sensors = [s for s in (current or "NONE").split(",") if s and s != "NONE"]
        if sensor in sensors:
            plan.same(f"load_sensor of host {host}")
            continue
        new = ",".join(sensors + [sensor])

        def set_sensor(host: str = host, conf: Optional[Dict[str, str]] = conf,
                       current: Optional[str] = current, new: str = new) -> None:
            rec = state["hosts"].setdefault(host, {"created": conf is None, "previous": current})
            qconf.write_conf(host, {**(conf or {}), "load_sensor": new}, add=conf is None)
            state["hosts"][host] = rec
            _save_state(hooks_dir, state)
        plan.do(f"set load_sensor of host {host} to {new}", set_sensor)
        touched_hosts = True
    if touched_hosts:
        plan.do("re-apply the global configuration so running execds start the sensor",
                qconf.reapply_global)

    # 4. Queues: prolog (as root, to write the job's environment file), epilog (as
    # root, to end the job's claim), starter.
    attrs = {"prolog": f"root@{os.path.join(hooks_dir, 'prolog')}",
             "epilog": f"root@{os.path.join(hooks_dir, 'epilog')}"}
    if starter:
        attrs["starter_method"] = os.path.join(hooks_dir, "starter")
    qtypes = {}
    for queue in queues:
        conf = qconf.parse_conf(qconf.run("-sq", queue))
        qtypes[queue] = conf.get("qtype", "")
        for attr, value in attrs.items():
            current = conf.get(attr, "NONE")
            if current == value:
                plan.same(f"{attr} of queue {queue}")
                continue
            mine = state["queues"].get(queue, {})
            if attr == "epilog" and current != "NONE" and attr not in mine:
                # Not worth refusing for: claims are live only while Grid Engine runs
                # the job, so without the kit's epilog they end all the same.
                out.write(f"note: queue {queue} has its own epilog {current!r}, left as it "
                          f"is; jobs' claims on their images end when Grid Engine drops "
                          f"the job (or at once if that epilog runs `sge-image epilog` as root)\n")
                continue
            if current != "NONE" and attr not in mine:
                raise qconf.QconfError(
                    f"queue {queue} already has {attr} {current!r}; the kit will not replace "
                    f"another {attr} (set it to NONE first, or chain it from your own script)")

            def set_attr(queue: str = queue, attr: str = attr, value: str = value,
                         current: str = current) -> None:
                state["queues"].setdefault(queue, {}).setdefault(attr, current)
                qconf.set_queue_attr(queue, attr, value)
                _save_state(hooks_dir, state)
            plan.do(f"set {attr} of queue {queue} to {value}", set_attr)

    # Interactive jobs meet shepherd bugs once a queue has a prolog (engine_quirks.py):
    # the admin is told which queues and what users must do, before anything breaks.
    for line in _interactive_warnings(qtypes):
        out.write(line + "\n")

    # 5. Server-side JSV.
    if jsv:
        url = os.path.join(hooks_dir, "jsv")
        glob = qconf.show_conf("global") or {}
        current = glob.get("jsv_url", "NONE")
        if current == url:
            plan.same("jsv_url of the global configuration")
        else:
            if current not in ("NONE", "none") and state.get("jsv") is None:
                raise qconf.QconfError(f"the global configuration already has jsv_url {current!r}; "
                                       f"the kit will not replace another JSV")

            def set_jsv(glob: Dict[str, str] = glob, current: str = current,
                        url: str = url) -> None:
                if state.get("jsv") is None:
                    state["jsv"] = {"previous": current}
                qconf.write_conf("global", {**glob, "jsv_url": url})
                _save_state(hooks_dir, state)
            plan.do(f"set jsv_url of the global configuration to {url}", set_jsv)

    if not dry_run and os.path.isdir(hooks_dir):
        _save_state(hooks_dir, state)
    out.write(f"{plan.changes} change{'s' if plan.changes != 1 else ''}"
              f"{' planned' if dry_run else ''}\n")
    return 0


def _interactive_warnings(qtypes: Dict[str, str]) -> List[str]:
    first = (qconf.run("-help", check=False).splitlines() or [""])[0]
    # An admin user we cannot read is not assumed to be root: the warning stays.
    admin = install_check.bootstrap_admin_user() or "(unknown: no bootstrap file found)"
    return engine_quirks.interactive_prolog_warnings(engine_quirks.identify(first), admin,
                                                     qtypes)


def _install_agent_key(settings: Settings, state: State, plan: Plan, hooks_dir: str) -> None:
    if not settings.agent.enabled:
        return
    path = auth.key_path(settings)
    if os.path.exists(path):
        plan.same(f"agent key {path}")
        return

    def create() -> None:
        auth.create_key(path)
        state["agent_key"] = path
        if os.path.isdir(hooks_dir):
            _save_state(hooks_dir, state)
    plan.do(f"create the agent key {path} (root only)", create)


def _install_agent_user(settings: Settings, state: State, plan: Plan, hooks_dir: str) -> None:
    """On this host; on other exec hosts the site's user management makes it (the
    agent refuses to serve as a user that does not exist, and says so in the log)."""
    if not settings.agent.enabled:
        return
    name = settings.agent.user
    if user.exists(name):
        plan.same(f"agent user {name}")
        return

    def create() -> None:
        user.create(name)
        state["agent_user"] = name
        if os.path.isdir(hooks_dir):
            _save_state(hooks_dir, state)
    plan.do(f"create the system user {name} for the agent's server", create)


def _install_complexes(settings: Settings, state: State, plan: Plan, sync: bool) -> None:
    current = qconf.parse_complexes(qconf.run("-sc"))
    by_name = {r["name"]: r for r in current}
    wanted = kit_complexes(settings)
    mine = set(state["complexes"])
    # Refuse to take over a complex someone else defined differently.
    for name, row in wanted.items():
        have = by_name.get(name)
        if have and have != row and name not in mine:
            raise qconf.QconfError(f"complex {name!r} already exists with another definition "
                                   f"({' '.join(have.values())}); rename or remove it first")
    taken = {r["shortcut"]: r["name"] for r in current} | {r["name"]: r["name"] for r in current}
    for name, row in wanted.items():
        owner = taken.get(row["shortcut"])
        if owner and owner != name:
            raise qconf.QconfError(f"shortcut {row['shortcut']!r} of complex {name!r} is already "
                                   f"used by complex {owner!r}")
    new_rows = [r for r in current if r["name"] not in wanted]
    removed: List[str] = []
    if sync:
        stale = {n for n in mine if n not in wanted}
        removed = [r["name"] for r in new_rows if r["name"] in stale]
        new_rows = [r for r in new_rows if r["name"] not in stale]
    new_rows += list(wanted.values())
    added = [n for n in wanted if by_name.get(n) != wanted[n]]
    if not added and not removed:
        plan.same(f"{len(wanted)} complexes")
        return

    def apply() -> None:
        qconf.apply_complexes(new_rows)
        state["complexes"] = sorted((mine | {n for n in wanted if n not in by_name}) - set(removed))
    desc = []
    if added:
        desc.append(f"add/update complexes {', '.join(added)}")
    if removed:
        desc.append(f"remove complexes {', '.join(removed)}")
    plan.do("; ".join(desc), apply)


def uninstall(hooks_dir: str, dry_run: bool = False, out: TextIO = sys.stdout,
              wait: float = 180) -> int:
    """Undo install step by step; the state file shrinks as each step succeeds, so an
    interrupted uninstall can simply be run again."""
    _check_manager()
    hooks_dir = os.path.abspath(hooks_dir)
    path = os.path.join(hooks_dir, STATE_FILE)
    if not os.path.exists(path):
        out.write(f"nothing to uninstall: no {path}\n")
        return 0
    state = _load_state(hooks_dir)
    plan = Plan(dry_run, out)

    def done(mutate: Callable[[State], object]) -> None:
        mutate(state)
        _save_state(hooks_dir, state)

    if state.get("jsv"):
        prev = state["jsv"]["previous"]

        def restore_jsv() -> None:
            glob = qconf.show_conf("global") or {}
            qconf.write_conf("global", {**glob, "jsv_url": prev})
            done(lambda s: s.update(jsv=None))
        plan.do(f"set jsv_url of the global configuration back to {prev}", restore_jsv)

    for queue, attrs in list(state["queues"].items()):
        for attr, prev in list(attrs.items()):
            def restore_queue(q: str = queue, a: str = attr, p: str = prev) -> None:
                qconf.set_queue_attr(q, a, p)
                done(lambda s: s["queues"][q].pop(a))
            plan.do(f"set {attr} of queue {queue} back to {prev}", restore_queue)

    for host, rec in list(state["hosts"].items()):
        def restore_host(host: str = host, rec: Dict[str, Any] = rec) -> None:
            conf = qconf.show_conf(host)
            if rec["created"]:
                if conf is not None:
                    qconf.run("-dconf", host)
            elif conf is not None:
                if rec["previous"] is None:
                    conf.pop("load_sensor", None)
                else:
                    conf["load_sensor"] = rec["previous"]
                qconf.write_conf(host, conf)
            done(lambda s: s["hosts"].pop(host))
        what = ("delete the host configuration of {h} (install created it)" if rec["created"]
                else "set load_sensor of host {h} back to " + (rec["previous"] or "(unset)"))
        plan.do(what.format(h=host), restore_host)
        state.setdefault("reapply", True)
    if state.get("reapply") or state["hosts"]:
        def reapply() -> None:
            qconf.reapply_global()
            done(lambda s: s.pop("reapply", None))
        plan.do("re-apply the global configuration so execds stop the sensor", reapply)

    if state["complexes"]:
        mine = set(state["complexes"])

        def remove_complexes() -> None:
            # qmaster refuses to delete a complex a host still has a load value of; the
            # values go when each execd has restarted its sensor list and reported.
            deadline = time.monotonic() + wait
            while True:
                rows = qconf.parse_complexes(qconf.run("-sc"))
                try:
                    qconf.apply_complexes([r for r in rows if r["name"] not in mine])
                    break
                except qconf.QconfError as e:
                    if "still referenced" not in str(e) or time.monotonic() > deadline:
                        raise qconf.QconfError(f"{e}; run `sge-image uninstall` again once the "
                                               f"exec hosts have reported without the sensor")
                    time.sleep(2)
            done(lambda s: s.update(complexes=[]))
        plan.do(f"remove complexes {', '.join(sorted(mine))}", remove_complexes)

    if state.get("agent_key"):
        def remove_key(path: str = state["agent_key"]) -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            done(lambda s: s.pop("agent_key", None))
        plan.do(f"remove the agent key {state['agent_key']}", remove_key)

    if state.get("agent_user"):
        def remove_user(name: str = state["agent_user"]) -> None:
            # The agents leave with their load sensors, removed above; userdel
            # refuses while one still runs as the user.
            deadline = time.monotonic() + wait
            while True:
                try:
                    user.remove(name)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(2)
            done(lambda s: s.pop("agent_user", None))
        plan.do(f"remove the system user {state['agent_user']} (install created it)",
                remove_user)

    def remove_hooks() -> None:
        for fn in ("prolog", "epilog", "loadsensor", "jsv", "starter", STATE_FILE):
            try:
                os.unlink(os.path.join(hooks_dir, fn))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(hooks_dir)
        except OSError:
            pass
    plan.do(f"remove the launchers in {hooks_dir}", remove_hooks)
    out.write(f"{plan.changes} change{'s' if plan.changes != 1 else ''}"
              f"{' planned' if dry_run else ''}\n")
    return 0


def _write_exec(path: str, text: str) -> None:
    atomic_write(path, text, mode=0o755)
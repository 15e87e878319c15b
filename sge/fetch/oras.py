"""oras://REGISTRY/REPO:TAG and oras://REGISTRY/REPO@sha256:DIGEST: a SIF pushed to an
OCI registry as an artifact (`apptainer push`, `oras push`).

The OCI distribution API on http.client: GET the manifest (with the OCI Accept
header: a registry answers 404 without it), pick the layer whose media type is
Apptainer's SIF type, and stream that blob through resumable.get. The layer digest
is the SIF's own sha256, so the sink checks the bytes against it as they arrive: a
catalog entry pinned by a manifest digest needs no sha256 of its own (the manifest
is checked against its pin before its layer digest is trusted), and an entry that
has one must agree with the registry, or the tag has moved to a new image version.

oras-py is not used for pulling: it does not verify digests.

Options (the image's `oras: {...}`; `docker_config` may also be site-wide under
`sources: {oras: {...}}`): insecure (plain http: only for a registry you run
yourself), username/password, docker_config, media_type (of the layer to take).
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from typing import TYPE_CHECKING

from ..errors import FetchError, VerifyError
from . import registry_auth, resumable, source_options
from .httpwire import USER_AGENT

if TYPE_CHECKING:
    from email.message import Message
    from http.client import HTTPResponse
    from typing import AbstractSet, Any, Dict, Literal, Mapping, Optional, Tuple, Union

    from ..sink import Sink
    from . import Context, Problem

OPTION_KEYS = {
    "insecure": "true to talk plain http to this registry",
    "username": "registry user name (else a docker config file is searched)",
    "password": "registry password or token",
    "docker_config": "path of a docker-style config.json with registry credentials",
    "media_type": "media type of the layer to take (default: Apptainer's SIF type)",
}
SITE_KEYS: Optional[AbstractSet[str]] = {"docker_config"}  # the others belong to each image
SIF_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_ARTIFACT)
ACCEPT = ", ".join(MANIFEST_TYPES + (OCI_INDEX, DOCKER_LIST))
MANIFEST_LIMIT = 4 << 20            # what distribution itself accepts
MAX_AUTH_TRIES = 3

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF = re.compile(
    rf"oras://(?P<host>(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{{1,5}})?)"
    rf"/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@sha256:(?P<digest>[0-9a-f]{64}))?$")


class Reference:
    __slots__ = ("host", "repo", "tag", "digest", "url")

    def __init__(self, host: str, repo: str, tag: str, digest: Optional[str], url: str) -> None:
        self.host, self.repo, self.tag, self.digest, self.url = host, repo, tag, digest, url

    @property
    def ref(self) -> str:
        return f"sha256:{self.digest}" if self.digest else self.tag


def parse(url: str) -> Reference:
    m = _REF.match(url)
    if not m:
        raise FetchError(f"{url}: not an oras URL (expected oras://REGISTRY/REPO:TAG or "
                         f"oras://REGISTRY/REPO@sha256:64-HEX-DIGITS, repository in lower case)",
                         transient=False)
    return Reference(m["host"], m["repo"], m["tag"] or "latest", m["digest"], url)


def check_options(options: Mapping[str, Any]) -> Optional[Problem]:
    for key, value in options.items():
        if key == "insecure":
            if not isinstance(value, bool):
                return key, f"{value!r} is not true or false"
        elif key in ("username", "password"):
            if not isinstance(value, str):
                return key, f"{value!r} is not text"
        elif not isinstance(value, str) or not value:
            return key, f"{value!r} is not a path or a word"
    if "password" in options and "username" not in options:
        return "password", "given without a username"
    return None


class Registry:
    """One registry, one repository, one pull: remembers the Authorization that worked."""

    def __init__(self, ref: Reference, opts: Dict[str, Any], ctx: Context) -> None:
        self.ref, self.opts, self.ctx = ref, opts, ctx
        self.insecure = bool(opts.get("insecure"))
        self.base = f"{'http' if self.insecure else 'https'}://{ref.host}"
        self.auth: Optional[str] = None
        self.scheme: Optional[str] = None
        self.strikes = 0
        # False until looked up (None: anonymous)
        self._creds: Union[registry_auth.Credentials, None, Literal[False]] = False

    @property
    def creds(self) -> Optional[registry_auth.Credentials]:
        if self._creds is False:
            self._creds = registry_auth.find_credentials(self.ref.host, self.opts,
                                                         self.ctx.sources, self.ctx.log)
        return self._creds

    def headers(self) -> Dict[str, str]:
        return {"Authorization": self.auth} if self.auth else {}

    def authenticate(self, status: int, msg: Optional[Message], progressed: bool = False) -> bool:
        """After a 401: new credentials to try (True), or none worth trying (False)."""
        if status != 401:
            return False
        if self.auth is not None and not progressed:
            self.strikes += 1
            # Basic credentials do not change; a Bearer token may have just expired.
            if self.strikes > 1 or self.scheme == "basic":
                return False
        else:
            self.strikes = 0
        scheme, params = registry_auth.parse_challenge(msg.get("WWW-Authenticate") if msg else None)
        self.scheme = scheme
        if scheme == "bearer":
            token = registry_auth.fetch_token(params, self.creds, self.ref.repo, self.ctx,
                                              self.insecure, self.ref.url)
            self.auth = f"Bearer {token}"
            return True
        if scheme == "basic" and self.creds is not None:
            if self.creds.identity_token:
                return False
            self.auth = self.creds.basic()
            return True
        return False

    def describe(self, status: int, reason: str, resp: HTTPResponse, body: bytes,
                 shown: str) -> FetchError:
        """The registry's JSON `errors` code, and what to do about a 401."""
        code = message = None  # from {"errors": [{"code", "message"}]} if the body is that
        with suppress(ValueError, KeyError, IndexError, TypeError, AttributeError):
            err = json.loads(body)["errors"][0]
            code, message = err.get("code"), err.get("message")
        head = f"{shown}: HTTP {status} " + (f"{code}" if code else reason or "")
        if message:
            head += f": {message}"
        if status == 401 or code in ("UNAUTHORIZED", "DENIED") or status == 403:
            if self.creds is None:
                hint = (f"no credentials for {self.ref.host}: log in (docker config file) or "
                        f"set oras.docker_config / oras.username in the catalog")
            else:
                hint = f"the credentials from {self.creds.origin} were refused"
            return FetchError(f"{head} (access denied; {hint})", transient=False)
        if status in (404, 410):
            return FetchError(f"{head} (not found)", transient=False)
        if code == "TOOMANYREQUESTS" or status in (408, 429) or status >= 500:
            return FetchError(f"{head} (registry busy or failing)", transient=True)
        return FetchError(head, transient=False)

    def get_manifest(self) -> Tuple[bytes, str]:
        url = f"{self.base}/v2/{self.ref.repo}/manifests/{self.ref.ref}"
        for _ in range(MAX_AUTH_TRIES):
            headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT, **self.headers()}
            try:
                resp, conn, _ = resumable.open_url(url, headers, self.ctx, shown=self.ref.url)
            except FetchError as e:
                if "does not speak TLS" in str(e):
                    raise FetchError(f"{e}; only for a registry you run yourself: "
                                     f"oras: {{insecure: true}}", transient=False) from None
                raise
            try:
                if resp.status == 200:
                    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
                    length = resp.getheader("Content-Length")
                    if length and length.isdigit() and int(length) > MANIFEST_LIMIT:
                        raise FetchError(f"{self.ref.url}: manifest of {length} bytes is too large "
                                         f"(limit {MANIFEST_LIMIT})", transient=False)
                    body = resumable.read_limited(resp, MANIFEST_LIMIT)
                    if length and length.isdigit() and len(body) != int(length):
                        raise FetchError(f"{self.ref.url}: manifest truncated ({len(body)} of "
                                         f"{length} bytes)", transient=True)
                    return body, ctype
                if resp.status == 401 and self.authenticate(resp.status, resp.msg):
                    continue
                raise resumable.refusal(resp, self.ref.url, self.describe)
            finally:
                conn.close()
        raise FetchError(f"{self.ref.url}: authentication failed {MAX_AUTH_TRIES} times",
                         transient=False)


def fetch(url: str, sink: Sink, ctx: Context) -> None:
    ref = parse(url)
    if ctx.image.sha256 is None and ref.digest != ctx.image.pin:
        # Without a catalog sha256 the entry's identity is its pin: a mirror by tag,
        # or pinning another manifest, could deliver a different image unnoticed.
        raise FetchError(f"{url}: the catalog has no sha256 for this image, so each oras "
                         f"source must pin its manifest @sha256:{ctx.image.pin or '...'}",
                         transient=False)
    reg = Registry(ref, source_options(ctx, "oras"), ctx)
    body, ctype = reg.get_manifest()
    manifest_digest = hashlib.sha256(body).hexdigest()
    if ref.digest and manifest_digest != ref.digest:
        # Before trusting its layer digest as the image's identity.
        raise VerifyError(f"{url}: the registry's manifest has sha256 {manifest_digest[:16]}..., "
                          f"not the pinned {ref.digest[:16]}... (corrupt registry or proxy)")
    layer = pick_layer(url, body, ctype, reg.opts.get("media_type") or SIF_MEDIA_TYPE)
    digest, size = layer
    ctx.log(f"image {ctx.image.name}: {url} is manifest sha256:{manifest_digest[:16]}..., "
            f"layer sha256:{digest[:16]}... ({size} bytes)")
    if sink.expected_sha256 is None:
        sink.expected_sha256 = digest
    elif sink.expected_sha256 != digest:
        moved = "" if ref.digest else f" (the tag {ref.tag!r} now names another image: a new " \
                                      f"version; update the catalog's sha256 if it is wanted)"
        raise FetchError(f"{url}: the registry's SIF is sha256 {digest[:16]}..., the catalog "
                         f"says {sink.expected_sha256[:16]}...{moved}", transient=False)
    if sink.expected_size is None:
        sink.expected_size = size
    elif sink.expected_size != size:
        raise FetchError(f"{url}: the registry's SIF is {size} bytes, the catalog says "
                         f"{sink.expected_size}", transient=False)
    blob = f"{reg.base}/v2/{ref.repo}/blobs/sha256:{digest}"
    mark = {"received": sink.received}

    def renew(status: int, msg: Message) -> Optional[Tuple[str, Dict[str, str]]]:
        progressed = sink.received > mark["received"]
        mark["received"] = sink.received
        if reg.authenticate(status, msg, progressed):
            return blob, reg.headers()
        return None

    resumable.get(blob, sink, ctx, headers=reg.headers(), describe=reg.describe, renew=renew,
                  shown=url)


def pick_layer(url: str, body: bytes, ctype: str, media_type: str) -> Tuple[str, int]:
    """(sha256 hex, size) of the one layer of `media_type`; a clear permanent error for
    an index, an unknown manifest type, or a manifest without (or with several)."""
    try:
        manifest = json.loads(body)
    except ValueError:
        raise FetchError(f"{url}: the registry's manifest is not JSON", transient=False) from None
    if not isinstance(manifest, dict):
        raise FetchError(f"{url}: the registry's manifest is not a JSON object", transient=False)
    mtype = manifest.get("mediaType") or ctype
    if mtype in (OCI_INDEX, DOCKER_LIST):
        digests = [m.get("digest", "?") for m in manifest.get("manifests", [])
                   if isinstance(m, dict)][:3]
        raise FetchError(f"{url}: is an image index, not one artifact; pin one of its manifests "
                         f"(oras://...@{' or @'.join(digests) or 'sha256:...'})", transient=False)
    if mtype not in MANIFEST_TYPES:
        raise FetchError(f"{url}: unexpected manifest media type {mtype!r} "
                         f"(expected {OCI_MANIFEST})", transient=False)
    layers = manifest.get("layers") if mtype != OCI_ARTIFACT else manifest.get("blobs")
    if not isinstance(layers, list):
        layers = []
    found = [layer for layer in layers if isinstance(layer, dict)
             and layer.get("mediaType") == media_type]
    if not found:
        have = ", ".join(sorted({str(layer.get("mediaType")) for layer in layers
                                 if isinstance(layer, dict)})) or "none"
        raise FetchError(f"{url}: the manifest has no layer of media type {media_type} "
                         f"(its layers: {have}); not an Apptainer image?", transient=False)
    if len(found) > 1:
        raise FetchError(f"{url}: the manifest has {len(found)} layers of media type "
                         f"{media_type}; which one is the image is ambiguous", transient=False)
    digest, size = found[0].get("digest"), found[0].get("size")
    m = re.fullmatch(r"sha256:([0-9a-f]{64})", str(digest))
    if not m:
        raise FetchError(f"{url}: layer digest {digest!r} is not sha256 (the only algorithm "
                         f"the cache verifies)", transient=False)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FetchError(f"{url}: layer size {size!r} is not a byte count", transient=False)
    return m.group(1), size

"""A resumable GET into the sink for sources that speak HTTP underneath: S3 through a
presigned URL, a registry's blobs with a token.

It is http.py's transfer loop (its `_open` and `_stream` pieces, measured fast) plus
what those sources need: extra request headers (a registry token, sent to the
registry's host only, never to the host a blob redirects to), the source's own error
wording (S3's XML <Code>, a registry's JSON `errors`), and fresh credentials when a
resume is refused with 401/403 because a token or a presigned URL expired in the
middle of a long download.
"""
from __future__ import annotations

import http.client
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from ..errors import FetchError, VerifyError
from . import httpwire as wire
from . import redact

if TYPE_CHECKING:
    from email.message import Message
    from typing import Callable, Dict, List, Mapping, Optional, Tuple

    from ..sink import Sink
    from . import Context

    # (status, reason, response, body, shown) -> the source's own error, or None
    Describe = Callable[[int, str, http.client.HTTPResponse, bytes, str], Optional[FetchError]]
    # (status, response headers) -> (new URL, new headers), or None: no fresh credentials
    Renew = Callable[[int, Message], Optional[Tuple[str, Optional[Mapping[str, str]]]]]

ERROR_BODY_LIMIT = 64 << 10
MAX_RENEWALS = 3


def get(url: str, sink: Sink, ctx: Context, headers: Optional[Mapping[str, str]] = None,
        describe: Optional[Describe] = None, renew: Optional[Renew] = None,
        shown: Optional[str] = None) -> None:
    """Fill `sink` from byte `sink.received` with the body of GET `url`.

    describe(status, reason, response, body, shown) -> FetchError or None words a
    refusal (None: http.py's wording). renew(status, response_headers) ->
    (url, headers) or None is asked for new credentials after a 400/401/403 (S3
    services differ in the status of an expired signature). `shown`
    names the source in messages: a presigned URL is itself a secret.
    """
    headers = dict(headers or {})
    shown = shown or redact(url)
    state: Dict[str, Optional[str]] = {"validator": None}
    resumes = renewals = 0
    while True:
        offset = sink.received
        try:
            _transfer(url, sink, ctx, offset, state, headers, describe, shown)
            return
        except _Refused as e:
            renewals += 1
            fresh = renew(e.status, e.headers) if renew and renewals <= MAX_RENEWALS else None
            if fresh is None:
                raise e.error from None
            url, new_headers = fresh
            headers = dict(new_headers or {})
            ctx.log(f"image {ctx.image.name}: {e.error}; renewed the credentials")
        except wire.Interrupted as e:
            if state["validator"] is None or sink.received == offset and resumes:
                raise FetchError(f"{shown}: {e}", transient=True) from None
            resumes += 1
            if resumes > wire.MAX_RESUMES:
                raise FetchError(f"{shown}: {e} (gave up after {wire.MAX_RESUMES} resumes)",
                                 transient=True) from None
            ctx.log(f"image {ctx.image.name}: {e}; resuming at byte {sink.received}")


class _Refused(Exception):
    """400/401/403: maybe only an expired token or URL, which `renew` can replace."""

    def __init__(self, status: int, headers: Message, error: FetchError) -> None:
        super().__init__(str(error))
        self.status, self.headers, self.error = status, headers, error


def _transfer(url: str, sink: Sink, ctx: Context, offset: int,
              state: Dict[str, Optional[str]], extra: Mapping[str, str],
              describe: Optional[Describe], shown: str) -> None:
    headers = {"User-Agent": wire.USER_AGENT, "Accept-Encoding": "identity", **extra}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state["validator"]:
            headers["If-Range"] = state["validator"]
    resp, conn, _ = open_url(url, headers, ctx, shown=shown)
    try:
        # rclone's S3 server answers a ranged GET with 200 *and* a Content-Range: that
        # body is partial, and taking it for a whole file would splice the image.
        partial = resp.status == 206 or (resp.status == 200 and resp.getheader("Content-Range"))
        if partial and offset:
            start = wire.range_start(resp.getheader("Content-Range"))
            if start != offset:
                raise FetchError(f"{shown}: server resumed at byte {start}, not {offset}",
                                 transient=True)
        elif resp.status == 200:
            if offset:
                ctx.log(f"image {ctx.image.name}: server ignored the range; restarting")
                sink.reset()
            length = resp.getheader("Content-Length")
            if length is not None and sink.expected_size is not None and int(length) != sink.expected_size:
                raise VerifyError(f"{shown}: server offers {length} bytes, expected "
                                  f"{sink.expected_size} (wrong file?)")
        else:
            error = refusal(resp, shown, describe)
            if resp.status in (400, 401, 403):
                raise _Refused(resp.status, resp.msg, error)
            raise error
        accept = (resp.getheader("Accept-Ranges") or "").lower()
        validator = resp.getheader("ETag") or resp.getheader("Last-Modified")
        state["validator"] = validator if ("bytes" in accept or partial) else None
        wire.stream_body(resp, sink, ctx, shown)
    finally:
        conn.close()


def open_url(url: str, headers: Mapping[str, str], ctx: Context, method: str = "GET",
             body: Optional[bytes] = None,
             shown: Optional[str] = None) -> Tuple[http.client.HTTPResponse,
                                                   http.client.HTTPConnection, str]:
    """http.py's request with redirects followed, except that `Authorization` goes
    to the first host only: a registry that redirects a blob to object storage must
    not leak its token there (and S3 rejects a request with both a token and a
    signed URL). Returns (response, connection, final URL)."""
    first = _origin(url)
    seen: List[str] = []
    for _ in range(wire.MAX_REDIRECTS + 1):
        conn = wire.connection(url, ctx)
        parts = urlsplit(url)
        target = url if conn.absolute else (parts.path or "/") + (
            f"?{parts.query}" if parts.query else "")
        hdrs = dict(headers) if _origin(url) == first else {
            k: v for k, v in headers.items() if k.lower() != "authorization"}
        if conn.auth:
            hdrs["Authorization"] = conn.auth
        try:
            conn.request(method, target, body=body, headers=hdrs)
            wire.tune(conn, ctx)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if isinstance(e, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(e):
                # Retrying cannot help: the server speaks plain http.
                raise FetchError(f"{shown or redact(url)}: the server does not speak TLS "
                                 f"(a plain-http server behind an https URL?)",
                                 transient=False) from None
            raise FetchError(f"{shown or redact(url)}: {wire.describe(e)}",
                             transient=True) from None
        if resp.status in (301, 302, 303, 307, 308) and method == "GET":
            location = resp.getheader("Location")
            if not location:
                return resp, conn, url  # S3's PermanentRedirect: the body names the region
            conn.close()
            seen.append(url)
            url = urljoin(url, location)
            if url in seen:
                raise FetchError(f"{shown or redact(url)}: redirect loop", transient=False)
            continue
        return resp, conn, url
    raise FetchError(f"{shown or redact(url)}: more than {wire.MAX_REDIRECTS} redirects",
                     transient=False)


def _origin(url: str) -> Tuple[str, Optional[str], Optional[int]]:
    p = urlsplit(url)
    return (p.scheme, p.hostname, p.port)


def refusal(resp: http.client.HTTPResponse, shown: str,
            describe: Optional[Describe] = None) -> FetchError:
    """A FetchError for a non-2xx answer, worded by the source when it can."""
    body = read_limited(resp, ERROR_BODY_LIMIT)
    error = None
    if describe is not None:
        error = describe(resp.status, resp.reason, resp, body, shown)
    if error is None:
        error = wire.status_error(resp, shown)
    error.status = resp.status
    return error


def read_limited(resp: http.client.HTTPResponse, limit: int) -> bytes:
    """Up to `limit` bytes of a body (error pages, manifests); never the whole of a
    misdirected multi-GB answer."""
    try:
        data = resp.read(limit + 1)
    except (OSError, http.client.HTTPException):
        return b""
    return data[:limit]

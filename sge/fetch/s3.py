"""s3://BUCKET/KEY: botocore finds the endpoint, region and credentials the usual AWS
way (environment, shared config and credentials files, profiles, SSO, instance role)
and presigns one GET; the bytes then travel through resumable.get, the same
http.client `readinto` loop as http://, which resumes an interrupted body and is
faster than botocore's own streaming body (urllib3 reads into new bytes objects).

botocore is imported here, on the cold path of an s3 image only: importing it and
building a client costs about 140 ms, nothing next to the transfer.

Options, site-wide under `sources: {s3: {...}}` and per image under `s3: {...}` (the
image's win key by key): endpoint_url, region, profile, credentials_file, anonymous,
addressing_style. Secrets are deliberately not options: the catalog is read by every
job, so keys belong in a profile or a credentials file only root can read.

The integrity check is the catalog's sha256, as for every source: an S3 ETag is an
MD5 only for single-part uploads, and for multipart uploads not a content hash at all.

One stream, not parallel ranges, because they measured no faster here. A prototype
(N threads fetching 16 MiB ranges into memory, committed to the sink in order) took
1 GiB from docker-registry in 1.2 s with 2 streams and 1.7 s with 4, against 1.6 s
for one stream, all within this 2-core machine's run-to-run noise; from `rclone serve
s3` the ranged requests took 62-85 s against 4.7 s for one stream, because that server
reads the whole object to compute its MD5 ETag before the first byte of every GET,
ranged or not (1.2-1.8 s per GiB, as much for 1 KiB as for the whole object). The sink hashes
and writes in order on one core (about 1.2 GB/s), which one loopback or LAN stream
already fills; ranges would need positioned writes and a second pass to hash, and
pay only where one TCP stream is the bottleneck (a distant endpoint), which a site
S3 service feeding node-local caches is not. `bench/bench_sources.py --ranges N`
times N concurrent curl ranges against the S3 server, to re-check on other hardware.
"""
from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from ..errors import FetchError
from . import redact, resumable, source_options

if TYPE_CHECKING:
    from email.message import Message
    from http.client import HTTPResponse
    from typing import AbstractSet, Any, Dict, Mapping, Optional, Tuple

    from ..sink import Sink
    from . import Context, Problem

OPTION_KEYS = {
    "endpoint_url": "the http(s) URL of an S3-compatible service (default: AWS)",
    "region": "a region name such as us-east-1",
    "profile": "a profile of the AWS shared config/credentials files",
    "credentials_file": "path of an AWS shared credentials file",
    "anonymous": "true to send unsigned requests (public buckets)",
    "addressing_style": "path, virtual or auto",
}
SITE_KEYS: Optional[AbstractSet[str]] = None  # every option may also be set site-wide
PRESIGN_SECONDS = 3600
DEFAULT_REGION = "us-east-1"
NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
          "AccountProblem", "InvalidToken", "InvalidObjectState", "InvalidSecurity"}
EXPIRED = {"ExpiredToken", "RequestExpired", "TokenRefreshRequired"}
BUSY = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Busy"}


def check_options(options: Mapping[str, Any]) -> Optional[Problem]:
    """(key, problem) for the first bad value, or None; keys are checked by the caller."""
    for key, value in options.items():
        if key == "anonymous":
            if not isinstance(value, bool):
                return key, f"{value!r} is not true or false"
        elif key == "addressing_style":
            if value not in ("path", "virtual", "auto"):
                return key, f"{value!r} is not one of path, virtual, auto"
        elif key == "endpoint_url":
            if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
                return key, f"{value!r} is not an http(s) URL"
        elif not isinstance(value, str) or not value:
            return key, f"{value!r} is not a word or a path"
    return None


def parse(url: str) -> Tuple[str, str]:
    rest = url.split("://", 1)[1] if "://" in url else ""
    bucket, _, key = rest.partition("/")
    if not bucket or not key or not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", bucket):
        raise FetchError(f"{redact(url)}: not an S3 URL (expected s3://BUCKET/KEY)",
                         transient=False)
    return bucket, key


def fetch(url: str, sink: Sink, ctx: Context) -> None:
    bucket, key = parse(url)
    opts = source_options(ctx, "s3")
    client = _client(url, opts)
    signed_at: Dict[str, Optional[int]] = {"received": None}

    def presign() -> str:
        signed_at["received"] = sink.received
        return _presign(client, url, bucket, key)

    def renew(status: int, headers: Message) -> Optional[Tuple[str, Dict[str, str]]]:
        # A refusal after progress is an expired URL or token (403 from AWS, 400 from
        # some S3 services): sign again, once per stretch of progress; a refusal
        # before any byte is a real denial.
        if status not in (400, 403) or sink.received in (0, signed_at["received"]):
            return None
        return presign(), {}

    def describe(status: int, reason: str, resp: HTTPResponse, body: bytes,
                 shown: str) -> FetchError:
        return _describe(url, status, reason, resp, body, bool(opts.get("anonymous")))

    resumable.get(presign(), sink, ctx, describe=describe, renew=renew, shown=url)


def _client(url: str, opts: Mapping[str, Any]) -> Any:  # a botocore S3 client
    # botocore is the `s3` extra, and loading a catalog of s3 images must not need it:
    # it is imported when a pull first asks for it.
    try:
        import botocore  # noqa: PLC0415
        import botocore.session  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415
        from botocore.exceptions import BotoCoreError  # noqa: PLC0415
    except ImportError:
        raise FetchError(f"{url}: s3 sources need botocore on this host "
                         f"(pip install 'sge-image-kit[s3]')", transient=False) from None
    try:
        session = botocore.session.Session(profile=opts.get("profile"))
        if opts.get("credentials_file"):
            session.set_config_variable("credentials_file", opts["credentials_file"])
        region = opts.get("region") or session.get_config_variable("region") or DEFAULT_REGION
        cfg: Dict[str, Any] = {"signature_version": "s3v4",
                               "s3": {"addressing_style": opts.get("addressing_style", "auto")}}
        if opts.get("anonymous"):
            cfg["signature_version"] = botocore.UNSIGNED
        return session.create_client("s3", region_name=region,
                                     endpoint_url=opts.get("endpoint_url"), config=Config(**cfg))
    except (BotoCoreError, ValueError) as e:
        raise FetchError(f"{url}: {e}", transient=False) from None


def _presign(client: Any, url: str, bucket: str, key: str) -> str:
    from botocore.exceptions import BotoCoreError, NoCredentialsError  # noqa: PLC0415 (the s3 extra)
    try:
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGN_SECONDS)
    except NoCredentialsError:
        raise FetchError(f"{url}: no AWS credentials found (environment, shared config, "
                         f"instance role); set s3.profile or s3.credentials_file, or "
                         f"s3.anonymous: true for a public bucket", transient=False) from None
    except (BotoCoreError, ValueError) as e:
        raise FetchError(f"{url}: cannot sign the request: {e}", transient=False) from None


def _describe(url: str, status: int, reason: str, resp: HTTPResponse, body: bytes,
              anonymous: bool = False) -> FetchError:
    """S3's own words for a refusal: its XML <Code> says a missing key from a missing
    bucket, a wrong key id from a wrong secret, a busy server from a broken one."""
    text = body.decode("utf-8", "replace")
    code = _xml(text, "Code")
    message = _xml(text, "Message")
    region = resp.getheader("x-amz-bucket-region") or _xml(text, "Region")
    head = f"{url}: HTTP {status}" + (f" {code}" if code else f" {reason}".rstrip())
    if message:
        head += f": {message}"
    if region and code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                           "AuthorizationQueryParametersError", "IllegalLocationConstraintException"):
        return FetchError(f"{head} (the bucket is in region {region}: set s3.region)",
                          transient=False)
    if code in NOT_FOUND or (not code and status in (404, 410)):
        return FetchError(f"{head} (not found)", transient=False)
    if anonymous and status in (400, 401, 403):
        return FetchError(f"{head} (access denied to an unsigned request: the bucket is not "
                          f"public; drop s3.anonymous and give credentials)", transient=False)
    if code in DENIED or (not code and status in (401, 403)):
        return FetchError(f"{head} (access denied; check the credentials)", transient=False)
    if code in EXPIRED:
        return FetchError(f"{head} (expired credentials)", transient=True)
    if code in BUSY or status in (408, 429) or status >= 500:
        return FetchError(f"{head} (server busy or failing)", transient=True)
    return FetchError(head, transient=False)


def _xml(text: str, tag: str) -> Optional[str]:
    m = re.search(rf"<{tag}>([^<]{{0,500}})</{tag}>", text)
    return html.unescape(m.group(1).strip()) if m else None

"""Sources: one module per URL scheme, each with `fetch(url, sink, ctx)`.

A fetcher streams bytes into the sink (which hashes and counts them) and raises
`FetchError(transient=...)` on failure; it never verifies or publishes: `fetch_image`
tries the image's mirrors in order, retries transient failures with jittered
exponential backoff, and verifies size and sha256 after every attempt. Modules are
imported on first use, so a node that only uses http never imports boto3.
"""
from __future__ import annotations

import importlib
import random
import time
from urllib.parse import urlsplit

from ..errors import FetchError, VerifyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

    from ..config import Image
    from ..sink import Sink

    LogFn = Callable[[str], None]
    # A bad option: (its key, what is wrong with it).
    Problem = Tuple[str, str]

SCHEMES = {
    "": "file", "file": "file",
    "http": "http", "https": "http",
    "s3": "s3",
    "oras": "oras",
    "docker": "command", "docker-archive": "command", "library": "command", "shub": "command",
}


class Context:
    """What a fetcher may know besides the URL: timeouts, the image's own source
    options, site-wide source settings, and where to log."""

    def __init__(self, image: Image, fetch_settings: Mapping[str, Any],
                 sources: Optional[Mapping[str, Any]] = None,
                 log: Optional[LogFn] = None) -> None:
        self.image = image
        self.connect_timeout = fetch_settings["connect_timeout"]
        self.read_timeout = fetch_settings["read_timeout"]
        self.command_timeout = fetch_settings.get("command_timeout", 3600)
        self.settings = fetch_settings
        self.sources: Mapping[str, Any] = sources or {}
        self.log: LogFn = log or (lambda msg: None)


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    return scheme


def module_for(url: str) -> ModuleType:
    scheme = scheme_of(url)
    try:
        name = SCHEMES[scheme]
    except KeyError:
        raise FetchError(f"{url}: unknown source scheme {scheme!r} "
                         f"(known: {', '.join(sorted(s for s in SCHEMES if s))})",
                         transient=False) from None
    return importlib.import_module(f"{__name__}.{name}")


def source_options(ctx: Context, kind: str,
                   site_keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Site-wide `sources.KIND` overridden by the image's own `KIND:` options. A bad
    site-wide key is reported here, at fetch, because the site file is not the catalog
    (the catalog's keys are checked at load, with their line)."""
    mod = importlib.import_module(f"{__name__}.{kind}")
    site = ctx.sources.get(kind) or {}
    if not isinstance(site, dict):
        raise FetchError(f"config sources.{kind} must be a mapping of options", transient=False)
    keys = set(mod.OPTION_KEYS if site_keys is None else site_keys)
    unknown = sorted(set(site) - keys)
    if unknown:
        hint = "" if site_keys is None else "; the others belong to each image"
        problem: Optional[Problem] = (
            unknown[0], f"unknown option (known: {', '.join(sorted(keys))}{hint})")
    else:
        check = getattr(mod, "check_options", None)
        problem = check(site) if check else None
    if problem:
        raise FetchError(f"config sources.{kind}.{problem[0]}: {problem[1]}", transient=False)
    return {**site, **ctx.image.options.get(kind, {})}


def redact(url: str) -> str:
    """A URL fit for a log line: no user:password."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url


def fetch_image(image: Image, sink: Sink, ctx: Context,
                sleep: Callable[[float], None] = time.sleep) -> str:
    """Fill `sink` with `image` from its first working mirror; returns the sha256.

    Permanent failures (404, 401, digest mismatch) drop that mirror; transient ones
    are retried `retries` times with backoff. The raised error is transient if any
    mirror failed only transiently: a later run may succeed.
    """
    retries = ctx.settings["retries"]
    base, cap = ctx.settings["backoff"], ctx.settings["backoff_max"]
    live = list(image.urls)
    errors: List[str] = []
    for attempt in range(retries + 1):
        for url in list(live):
            shown = redact(url)
            try:
                if sink.received:
                    sink.reset()
                module_for(url).fetch(url, sink, ctx)
                return sink.finish(shown)
            except VerifyError as e:
                errors.append(str(e))
                live.remove(url)
            except FetchError as e:
                msg = str(e)
                errors.append(msg if shown in msg else f"{shown}: {msg}")
                if not e.transient:
                    live.remove(url)
            ctx.log(f"image {image.name}: {errors[-1]}")
        if not live:
            break
        if attempt < retries:
            delay = min(cap, base * 2 ** attempt) * random.uniform(0.5, 1.0)
            ctx.log(f"image {image.name}: retrying in {delay:.1f}s "
                    f"(attempt {attempt + 2} of {retries + 1})")
            sleep(delay)
    transient = bool(live)
    last = errors[-1] if errors else "no source"
    raise FetchError(f"image {image.name!r}: every source failed; last: {last}",
                     transient=transient)


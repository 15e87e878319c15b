"""Sources: one module per kind of URL, each with `fetch(url, sink, ctx)`, listed in
one registry (SOURCES) with the schemes it serves.

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
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import FetchError, VerifyError

if TYPE_CHECKING:
    from typing import AbstractSet, Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

    from ..config import FetchSettings, Image
    from ..sink import Sink

    LogFn = Callable[[str], None]
    # A bad option: (its key, what is wrong with it).
    Problem = Tuple[str, str]


class Source:
    """One entry of the registry: a module `sge.fetch.NAME`, imported on first use, and
    the URL schemes it serves. A source that `takes_options` is configured under its
    name, site-wide in `sources: {NAME: {...}}` and per image in `NAME: {...}`."""

    __slots__ = ("name", "schemes", "takes_options")

    def __init__(self, name: str, schemes: Tuple[str, ...], takes_options: bool = False) -> None:
        self.name, self.schemes, self.takes_options = name, schemes, takes_options


# The one registry: a new scheme is a module implementing `Fetcher` (or
# `ConfigurableFetcher`) and a line here. Names only, so that loading the settings or
# the catalog imports no fetcher (the s3 one brings botocore).
SOURCES = (
    Source("file", ("", "file")),
    Source("http", ("http", "https")),
    Source("s3", ("s3",), takes_options=True),
    Source("oras", ("oras",), takes_options=True),
    Source("command", ("docker", "docker-archive", "library", "shub"), takes_options=True),
)
SCHEMES = {scheme: src.name for src in SOURCES for scheme in src.schemes}
OPTION_SOURCES = tuple(src.name for src in SOURCES if src.takes_options)

if TYPE_CHECKING:
    class Fetcher(Protocol):
        """What a source module provides: `fetch` streams the URL's bytes into the sink
        and raises FetchError(transient=...) on failure; it never verifies."""

        def fetch(self, url: str, sink: Sink, ctx: Context) -> None: ...

    class ConfigurableFetcher(Fetcher, Protocol):
        """A source with options: their keys (with a line of help each), those that may
        also be set site-wide (None: all of them), and a check of their values."""

        @property
        def OPTION_KEYS(self) -> Mapping[str, str]: ...  # noqa: N802 (a module constant)

        @property
        def SITE_KEYS(self) -> Optional[AbstractSet[str]]: ...  # noqa: N802

        def check_options(self, options: Mapping[str, Any]) -> Optional[Problem]: ...

    # sge/fetch/contract_check.py has the type checker prove that every registered
    # module keeps the contract.


class Context:
    """What a fetcher may know besides the URL: timeouts, the image's own source
    options, site-wide source settings, and where to log."""

    def __init__(self, image: Image, fetch_settings: FetchSettings,
                 sources: Optional[Mapping[str, Any]] = None,
                 log: Optional[LogFn] = None) -> None:
        self.image = image
        self.connect_timeout = fetch_settings.connect_timeout
        self.read_timeout = fetch_settings.read_timeout
        self.command_timeout = fetch_settings.command_timeout
        self.settings = fetch_settings
        self.sources: Mapping[str, Any] = sources or {}
        self.log: LogFn = log or (lambda msg: None)


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    return scheme


def fetcher(name: str) -> Fetcher:
    """The module of registered source `name`."""
    mod: Fetcher = importlib.import_module(f"{__name__}.{name}")
    return mod


def configurable(name: str) -> ConfigurableFetcher:
    if name not in OPTION_SOURCES:
        raise KeyError(name)
    mod: ConfigurableFetcher = importlib.import_module(f"{__name__}.{name}")
    return mod


def fetcher_for(url: str) -> Fetcher:
    scheme = scheme_of(url)
    try:
        name = SCHEMES[scheme]
    except KeyError:
        raise FetchError(f"{url}: unknown source scheme {scheme!r} "
                         f"(known: {', '.join(sorted(s for s in SCHEMES if s))})",
                         transient=False) from None
    return fetcher(name)


def check_options(name: str, options: Mapping[str, Any], site: bool = False) -> Optional[Problem]:
    """(key, problem) for the first bad option of source `name`, or None: an unknown key,
    then whatever the source's own check finds. The catalog's options are checked at
    load, so a misspelt `enpoint_url:` fails with its line, not at the first cold pull;
    `site` checks the keys allowed in the site-wide `sources:` section instead."""
    mod = configurable(name)
    keys = set(mod.OPTION_KEYS if not site or mod.SITE_KEYS is None else mod.SITE_KEYS)
    unknown = sorted(set(options) - keys)
    if unknown:
        hint = "; the others belong to each image" if keys != set(mod.OPTION_KEYS) else ""
        return unknown[0], f"unknown option (known: {', '.join(sorted(keys))}{hint})"
    return mod.check_options(options)


def source_options(ctx: Context, name: str) -> Dict[str, Any]:
    """Site-wide `sources.NAME` overridden by the image's own `NAME:` options. A bad
    site-wide key is reported here, at fetch, because the site file is not the catalog
    (the catalog's keys are checked at load, with their line)."""
    site = ctx.sources.get(name) or {}
    if not isinstance(site, dict):
        raise FetchError(f"config sources.{name} must be a mapping of options", transient=False)
    problem = check_options(name, site, site=True)
    if problem:
        raise FetchError(f"config sources.{name}.{problem[0]}: {problem[1]}", transient=False)
    return {**site, **ctx.image.options.get(name, {})}


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
    retries = ctx.settings.retries
    base, cap = ctx.settings.backoff, ctx.settings.backoff_max
    live = list(image.urls)
    errors: List[str] = []
    for attempt in range(retries + 1):
        for url in list(live):
            shown = redact(url)
            try:
                if sink.received:
                    sink.reset()
                fetcher_for(url).fetch(url, sink, ctx)
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


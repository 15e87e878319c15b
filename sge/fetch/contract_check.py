"""For the type checker only, never imported: every module in the registry (SOURCES in
sge/fetch/__init__.py) keeps the `Fetcher` contract, and those that take options the
`ConfigurableFetcher` one. Apart, so that the package itself imports no source module,
not even for type checking (no import cycle)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Tuple

    from . import ConfigurableFetcher, Fetcher, command, file, http, oras, s3

    PLAIN: Tuple[Fetcher, ...] = (file, http)
    CONFIGURABLE: Tuple[ConfigurableFetcher, ...] = (s3, oras, command)

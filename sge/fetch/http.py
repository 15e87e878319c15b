"""http:// and https:// sources.

The transfer (the wire pieces in httpwire.py, resumed with `Range` + `If-Range` from the
byte the sink has, so the hash simply continues; a server that answers 200 to a ranged
request restarts the file) is resumable.py's, shared with s3 and oras.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .resumable import get

if TYPE_CHECKING:
    from ..sink import Sink
    from . import Context


def fetch(url: str, sink: Sink, ctx: Context) -> None:
    get(url, sink, ctx)

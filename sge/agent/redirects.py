"""Redirects: a busy agent names the hosts it is sending a blob to, and a client
streams from one of them instead of waiting or going to the origin.

Without them the hosts of a burst see only the seed (the sensor reports the others
up to a load report later), fill its upload slots, and the rest wait or go to the
origin (15.4x one copy on day one in the simulator instead of 1.0x). The header is
only a hint from a peer: the client follows an address only if it is a live cluster
host's, and how deep and how often is the peer plan's (sge/peerplan.py); the bytes go
through the verifying sink like any others.
"""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .. import peerplan

if TYPE_CHECKING:
    from typing import Iterable, List, Optional

HEADER = "X-Sge-Image-Peers"
# addresses a busy agent names; a header with more is ignored whole
MAX_NAMED = peerplan.MAX_NAMED


def header_value(sending: Iterable[str], requester: str) -> Optional[str]:
    """The header for a 503: up to MAX_NAMED distinct addresses of transfers of the
    requested digest, never the requester's own (it would ask itself)."""
    out: List[str] = []
    for ip in sending:
        if ip != requester and ip not in out:
            out.append(ip)
            if len(out) == MAX_NAMED:
                break
    return ",".join(out) if out else None


def parse(value: Optional[str]) -> List[str]:
    """Addresses named by a peer's header; [] for none, garbage or more than a
    conforming agent sends (a peer that lies about one thing is trusted with none)."""
    if not value or len(value) > 64 * MAX_NAMED:
        return []
    items = [x.strip() for x in value.split(",")]
    if len(items) > MAX_NAMED:
        return []
    try:
        return [str(ipaddress.ip_address(x)) for x in items]
    except ValueError:
        return []

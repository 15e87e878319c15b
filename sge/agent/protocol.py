"""The agents' protocol version, sent with every staging request and every answer.

Agents of different kit versions meet during a rolling upgrade. Blob GETs are the same
in every version (a GET by digest, verified by the receiver), so they interoperate.
Staging differs: protocol 1 (kits before 0.2, no header) answered unsigned; 2 signs
every answer, and a client of 2 believes no unsigned answer. The header lets a client
say which kind of host it met, so that the admin is told to upgrade that host rather
than to look for an impostor.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple

PROTOCOL = "2"
HEADER = "X-Sge-Image-Protocol"

STATES = ("ready", "staging", "retry", "failed", "refused")
MAX_MESSAGE = 2000  # characters of a failure's text an answer carries


class StageAnswer(NamedTuple):
    """An agent's answer to a staging request. `state`: ready (it has the image),
    staging (under way: ask again), retry (ask again with a fresh request), failed
    (`transient`: may work later; `busy`: a cache full of images in use) or refused
    (a wrong key or clock). `http` is the status it travels with, outside the signed
    body."""
    state: str
    message: str = ""
    transient: bool = True
    busy: bool = False
    http: int = 200

    def body(self) -> Dict[str, Any]:
        """The JSON body that is signed and sent, defaults left out as before."""
        out: Dict[str, Any] = {"state": self.state}
        if self.message:
            out["message"] = self.message[:MAX_MESSAGE] + \
                ("..." if len(self.message) > MAX_MESSAGE else "")
        if self.state == "failed":
            out["transient"] = self.transient
        if self.busy:
            out["busy"] = True
        return out

    @classmethod
    def from_body(cls, body: Mapping[str, Any], http: int = 200) -> StageAnswer:
        """A checked answer's body -> StageAnswer; ValueError for one that names no
        state we know (a newer agent's, or garbage that was signed: asked again).
        A failure that does not say whether it is transient counts as transient:
        the job waits rather than fails."""
        state = body.get("state")
        if state not in STATES:
            raise ValueError(f"HTTP {http}: an answer with state {str(state)[:40]!r}")
        return cls(state, str(body.get("message", "")), body.get("transient", True) is not False,
                   body.get("busy") is True, http)

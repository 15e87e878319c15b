"""Placement policies compared by the simulator.

``none``
    No image awareness: the JSV leaves ``-l image=NAME`` alone, Grid Engine
    places by load only (np_load_avg, then seq_no).
``soft`` (the kit's default)
    The JSV turns ``-l image=NAME`` into ``-soft -l <warm complex>=true``.
    Queue sort: the number of unmet soft requests decides first, then load,
    then seq_no.  A warm host with a free slot always wins; if no host the
    scheduler sees as warm has a free slot the task goes to a cold one (never
    pends).
``hard``
    The JSV adds a hard ``-l <warm complex>=true`` when the image is warm on at
    least one host at submit time (it can see the load-sensor values, as
    ``qhost -F`` does); otherwise it adds nothing, because a hard request no
    host can meet would pend forever.  Tasks with the hard request pend until a
    host the scheduler sees as warm has a free slot.
``soft+prewarm``
    ``soft`` plus a pre-warm daemon: every ``interval_s`` it ranks images by the
    tasks submitted in the last ``window_s`` and pulls each of the ``top``
    images onto every host (``host_fraction`` of them) that lacks it, at most
    ``max_inflight`` pulls at a time so on-demand pulls keep registry bandwidth.
    An image stays in the pre-warmed set while it ranks in the top 2 x ``top``.
    Pre-pulls go through the same cache (LRU, pins) and registry as prolog pulls.
``agent``
    ``soft`` plus the node agent (issue 10): hosts serve verified images to each
    other, a pull in flight is reported (so the soft request matches it and
    peers stream from it), a per-image seed makes the one origin pull, and a
    parallel job's image is staged on every host of the job before it starts
    (without the agent only the master host's prolog stages it).  The peer
    model and its parameters are in ``sim/sge_sim/peers.py`` and ``SimConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union


@dataclass(frozen=True)
class PrewarmConfig:
    interval_s: float = 600.0
    window_s: float = 6 * 3600.0
    top: int = 10
    host_fraction: float = 1.0
    max_inflight: int = 32


@dataclass(frozen=True)
class Policy:
    name: str
    soft: bool = False
    hard: bool = False
    prewarm: Optional[PrewarmConfig] = None
    agent: bool = False
    description: str = ""

    def jsv_hard(self, warm_hosts: int) -> bool:
        """Whether the JSV adds a hard warm request, given how many hosts report
        the image warm at submit time."""
        return self.hard and warm_hosts > 0


NONE = Policy("none", description="no image awareness: load, then seq_no")
SOFT = Policy("soft", soft=True, description="JSV soft request for the warm complex")
HARD = Policy("hard", hard=True, description="JSV hard request when warm anywhere")
SOFT_PREWARM = Policy("soft+prewarm", soft=True, prewarm=PrewarmConfig(),
                      description="soft request + pre-warm of the top images")

AGENT = Policy("agent", soft=True, agent=True,
               description="soft request + node agent: peers, in-flight reports, seed")

POLICIES: Dict[str, Policy] = {p.name: p for p in (NONE, SOFT, HARD, SOFT_PREWARM, AGENT)}
DEFAULT_POLICY = "soft"


def get_policy(policy: Union[str, Policy]) -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; one of {sorted(POLICIES)}") from None

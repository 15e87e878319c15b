"""Placement simulator for image-aware scheduling on Grid Engine.

A discrete-event model of exec hosts with slots, Grid Engine's queue sort
with soft/hard requests and lagging load reports, per-host LRU image caches,
and pulls sharing host links and the registry's egress.  It compares placement
policies (`POLICIES`) on a seeded job stream, and runs small explicit
scenarios (`run_scenario`) that can be replayed on a real Grid Engine to
calibrate the model.  The ``agent`` policy adds the node agent: peer transfers,
in-flight reports, a seed per image, parallel jobs staged on all their hosts
(`peers`).

It is its own distribution (``sge-image-sim``, ``sim/pyproject.toml``), not part
of the kit, so that exec hosts never install it.  It may import the kit's pure
policy modules (such as ``sge.eviction``); nothing in ``sge`` imports it.

    from sge_sim import simulate, summarize, SimConfig
    print(summarize(simulate("soft", SimConfig(hosts=100, hours=2))))
"""
from .engine import SCENARIO_SETTINGS, Engine, initial_caches, run_scenario, simulate
from .links import LinkNet
from .model import FixedNetwork, HostCache, SharedNetwork, SimConfig
from .policies import DEFAULT_POLICY, POLICIES, Policy, PrewarmConfig, get_policy
from .report import (
                     agent_goals,
                     cold_window,
                     format_agent_table,
                     format_cold_table,
                     format_details,
                     format_table,
                     format_whatif_table,
                     plot,
                     plot_agent,
                     summarize,
)
from .workload import Job, WorkloadConfig, generate_jobs, image_sizes

__all__ = [
    "DEFAULT_POLICY", "POLICIES", "SCENARIO_SETTINGS", "Engine", "FixedNetwork", "HostCache",
    "Job", "LinkNet", "Policy", "PrewarmConfig", "SharedNetwork", "SimConfig", "WorkloadConfig",
    "agent_goals", "cold_window", "format_agent_table", "format_cold_table", "format_details",
    "format_table", "format_whatif_table", "generate_jobs", "get_policy", "image_sizes",
    "initial_caches", "plot", "plot_agent", "run_scenario", "simulate", "summarize",
]

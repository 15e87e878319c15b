"""The one option every hook takes, parsed without argparse: the prolog and each load
sensor cycle should not pay for what they do not use."""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Optional, Sequence


def config_arg(argv: Sequence[str]) -> Optional[str]:
    """`--config PATH` or `--config=PATH` from argv, else None (config.load's default)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None

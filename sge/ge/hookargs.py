"""The one option every hook takes, parsed without argparse: the prolog and each load
sensor cycle should not pay for what they do not use."""


def config_arg(argv):
    """`--config PATH` or `--config=PATH` from argv, else None (config.load's default)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None

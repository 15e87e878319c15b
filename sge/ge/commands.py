"""Grid Engine subcommands of `sge-image` (jsv, loadsensor, prolog, starter, install)."""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    import argparse

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_parsers(sub: Subparsers) -> None:
    import argparse
    s = sub.add_parser("jsv", help="serve the job submission verifier protocol on stdin/stdout "
                                   "(jsv_url or qsub -jsv)")
    # SUPPRESS: without the option the global `sge-image --config` stays in effect.
    s.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="site config (default: the global --config, $SGE_IMAGE_CONFIG, "
                        "else /etc/sge-image/config.yaml)")
    s.add_argument("--launcher", metavar="PATH", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_jsv)


def _cmd_jsv(args: argparse.Namespace) -> int:
    from . import jsv
    return jsv.run(getattr(args, "config", None), launcher=args.launcher)


def add_kit_parsers(sub: Subparsers) -> None:
    """install/uninstall, prewarm and the hooks Grid Engine runs (through launchers)."""
    import argparse
    s = sub.add_parser("install", help="wire the kit into the cluster with qconf (idempotent)")
    s.add_argument("--dry-run", action="store_true", help="print every change, make none")
    s.add_argument("--check", action="store_true",
                   help="only run each launcher as the user Grid Engine runs it as (the JSV as "
                        "the admin user, sensor and prolog as root, the starter as nobody); "
                        "install does this first and refuses on failure")
    s.add_argument("--sync", action="store_true",
                   help="also remove per-image complexes of images no longer in the catalog")
    s.add_argument("--queue", action="append", dest="queues", metavar="Q",
                   help="queue to give the prolog (repeatable; default all.q)")
    s.add_argument("--host", action="append", dest="hosts", metavar="HOST",
                   help="exec host to give the load sensor (repeatable; default every exec host)")
    s.add_argument("--starter", action="store_true",
                   help="also set the starter method (runs jobs inside their image)")
    s.add_argument("--no-jsv", action="store_true", help="leave the global jsv_url alone")
    s.add_argument("--hooks-dir", metavar="DIR",
                   help="where the launchers go (default: hooks/ beside the config)")
    s.set_defaults(func=_cmd_install)

    s = sub.add_parser("uninstall", help="remove exactly what install added")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--hooks-dir", metavar="DIR")
    s.set_defaults(func=_cmd_uninstall)

    s = sub.add_parser("prewarm", help="stage an image on exec hosts through Grid Engine jobs")
    s.add_argument("name")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--hosts", type=int, metavar="N", help="until N hosts have it (most free cache first)")
    g.add_argument("--hostgroup", metavar="@GROUP", help="every host of a host group")
    g.add_argument("--all", action="store_true", help="every exec host (the default)")
    s.add_argument("--no-wait", action="store_true", help="submit and return")
    s.set_defaults(func=_cmd_prewarm)

    for name, module, help_ in (
            ("prolog", "prolog", "the queue prolog: stage $SGE_IMAGE (exit 0/99/100)"),
            ("epilog", "epilog", "the queue epilog: end the job's claim on its image (exit 0)"),
            ("loadsensor", "loadsensor", "the load sensor protocol on stdin/stdout"),
            ("starter", "starter", "the starter method: run the job inside its image")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("args", nargs="*", help=argparse.SUPPRESS)
        s.set_defaults(func=lambda a, m=module: _run_hook(m, a))

    s = sub.add_parser("agent", help="the node agent: serve cached images to peers, stage "
                                     "parallel jobs (started by the load sensor's supervisor)")
    s.add_argument("--watch", metavar="PID", help="leave when this process is gone")
    s.set_defaults(func=_cmd_agent)


def _cmd_agent(args: argparse.Namespace) -> int:
    from ..agent.main import main
    argv = (["--config", args.config] if args.config else [])
    return main(argv + (["--watch", args.watch] if args.watch else []))


def _hooks_dir(args: argparse.Namespace, settings_path: str) -> str:
    import os
    return args.hooks_dir or os.path.join(os.path.dirname(os.path.abspath(settings_path)), "hooks")


def _cmd_install(args: argparse.Namespace) -> int:
    from .. import config
    from . import install
    settings = config.load(args.config, use_snapshot=False)
    hooks = _hooks_dir(args, settings.path or config.config_path(args.config))
    if args.check:
        return install.check(settings, hooks, starter=args.starter, jsv=not args.no_jsv)
    return install.install(settings, hooks, queues=args.queues or ["all.q"],
                           hosts=args.hosts, starter=args.starter, jsv=not args.no_jsv,
                           sync=args.sync, dry_run=args.dry_run)


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from .. import config
    from . import install
    return install.uninstall(_hooks_dir(args, config.config_path(args.config)), dry_run=args.dry_run)


def _cmd_prewarm(args: argparse.Namespace) -> int:
    from . import prewarm
    return prewarm.main(args)


def _run_hook(module: str, args: argparse.Namespace) -> int:
    import importlib
    argv = (["--config", args.config] if args.config else []) + list(args.args)
    return importlib.import_module(f"{__package__}.{module}").main(argv)

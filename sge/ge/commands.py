"""Grid Engine subcommands of `sge-image` (jsv, loadsensor, prolog, starter, install)."""


def add_parsers(sub):
    import argparse
    s = sub.add_parser("jsv", help="serve the job submission verifier protocol on stdin/stdout "
                                   "(jsv_url or qsub -jsv)")
    # SUPPRESS: without the option the global `sge-image --config` stays in effect.
    s.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="site config (default: the global --config, $SGE_IMAGE_CONFIG, "
                        "else /etc/sge-image/config.yaml)")
    s.set_defaults(func=_cmd_jsv)


def _cmd_jsv(args):
    from . import jsv
    return jsv.run(getattr(args, "config", None))

"""Grid Engine subcommands of `sge-image` (jsv, loadsensor, prolog, starter, install)."""


def add_parsers(sub):
    pass

"""The argparse-free reading of `pull`/`path` (sge/cli.py _fast_args) must agree with
argparse wherever it answers, and leave everything else (help, errors, abbreviations,
other subcommands) to argparse."""
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sge import cli

TOKENS = ["pull", "path", "status", "demo", "img-1.sif", "", "-", "--", "-q", "--quiet",
          "--qui", "-h", "--help", "--config", "--config=/c.yaml", "--conf", "/c.yaml",
          "-x", "-1", "a b", "--json"]


def _argparse(argv):
    try:
        return vars(cli._parser().parse_args(argv))
    except SystemExit:
        return None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=6))
def test_fast_path_agrees_with_argparse(argv):
    fast = cli._fast_args(argv)
    if fast is not None:
        assert vars(fast) == _argparse(argv), argv


def test_common_shapes_take_the_fast_path():
    for argv, want in [
        (["pull", "demo"], {"command": "pull", "name": "demo", "quiet": False, "config": None}),
        (["--config", "/c", "pull", "demo", "-q"],
         {"command": "pull", "name": "demo", "quiet": True, "config": "/c"}),
        (["pull", "-q", "demo", "--config", "/c"],
         {"command": "pull", "name": "demo", "quiet": True, "config": "/c"}),
        (["--config", "/c", "path", "demo"], {"command": "path", "name": "demo", "config": "/c"}),
    ]:
        assert vars(cli._fast_args(argv)) == want == _argparse(argv)


def test_everything_else_goes_to_argparse():
    for argv in (["pull"], ["pull", "-h"], ["--help"], ["path", "demo", "-q"],
                 ["pull", "demo", "x"], ["--conf", "/c", "pull", "demo"], ["status"],
                 ["--config=/c", "pull", "demo"], ["--config", "/a", "pull", "demo",
                                                    "--config", "/b"]):
        assert cli._fast_args(argv) is None, argv


def test_errors_keep_argparse_messages():
    p = subprocess.run([sys.executable, "-m", "sge.cli", "pull"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "the following arguments are required: name" in p.stderr

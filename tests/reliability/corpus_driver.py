"""Run the prolog, the CLI and the starter on many image names in one process.

`python -m tests.reliability.corpus_driver CONFIG` reads a JSON list of names on
stdin and prints, per name, the exit code and output of each entry point (the same
`main` functions their launchers call; one interpreter instead of hundreds).
"""
import io
import json
import os
import sys


def _capture(fn):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        try:
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue() + err.getvalue()


def main():
    from sge import cli
    from sge.ge import prolog, starter
    config = sys.argv[1]
    results = []
    for name in json.load(sys.stdin):
        r = {"name": name, "prolog": None, "starter": None}
        # An environment cannot hold NUL, and an empty SGE_IMAGE is no image job (the
        # starter would exec the job, replacing this process).
        if "\0" not in name and name:
            os.environ["SGE_IMAGE"] = name
            os.environ["JOB_ID"] = "7"
            r["prolog"] = _capture(lambda: prolog.main(["--config", config]))
            r["starter"] = _capture(lambda: starter.main(["--config", config, "--", "/bin/true"]))
            del os.environ["SGE_IMAGE"]
        r["pull"] = _capture(lambda: cli.main(["--config", config, "pull", "-q", "--", name]))
        r["path"] = _capture(lambda: cli.main(["--config", config, "path", "--", name]))
        results.append(r)
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()

"""The prolog with pause points, so a test can kill it at an exact phase.

`python -m tests.reliability.driver --config CFG` runs `sge.ge.prolog.main` unchanged,
except that when the phase named by RELIABILITY_PAUSE is reached it writes that name
to the file RELIABILITY_MARK and sleeps (in the main thread, where the prolog's own
signal handling runs). Phases, in the order a cold stage meets them:

    evict-index  before a name-index link of an evicted blob is removed
    evict-blob   before an evicted blob is unlinked
    connect      lock held, temp file created, before the HTTP request
    publish      every byte received and verified, before publish() starts
    index        before the name-index link is renamed into place
    rename       before the verified temp file is renamed to its blob
"""
import os
import sys
import time

PAUSE = os.environ.get("RELIABILITY_PAUSE")
MARK = os.environ.get("RELIABILITY_MARK")


def _pause(phase):
    if phase != PAUSE:
        return
    with open(MARK, "w") as f:
        f.write(phase)
    time.sleep(120)  # the test's signal lands here


def _install():
    from sge import cache
    from sge.fetch import http

    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst, *a, **kw):
        parent = os.path.basename(os.path.dirname(os.fspath(dst)))
        if parent == "sha256":
            _pause("rename")
        elif parent == "images":
            _pause("index")
        return real_replace(src, dst, *a, **kw)

    def unlink(path, *a, **kw):
        parent = os.path.basename(os.path.dirname(os.fspath(path)))
        if parent == "sha256":
            _pause("evict-blob")
        elif parent == "images":
            _pause("evict-index")
        return real_unlink(path, *a, **kw)

    real_publish = cache.Cache.publish

    def publish(self, *a, **kw):
        _pause("publish")
        return real_publish(self, *a, **kw)

    real_fetch = http.fetch

    def fetch(*a, **kw):
        _pause("connect")
        return real_fetch(*a, **kw)

    os.replace, os.unlink = replace, unlink
    cache.Cache.publish = publish
    http.fetch = fetch


if __name__ == "__main__":
    if PAUSE:
        _install()
    from sge.ge import prolog
    sys.exit(prolog.main(sys.argv[1:]))

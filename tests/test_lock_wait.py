"""The bounded lock wait (sge/cache.py _flock): an interval timer in the main thread,
a plain blocking wait in any other (signal handlers run only in the main thread)."""
import fcntl
import os
import threading
import time

import pytest

from sge.cache import Cache
from sge.errors import LockTimeout


def _hold(cache, name):
    fd = os.open(os.path.join(cache.root, "locks", f"{name}.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_main_thread_wait_is_bounded(tmp_path):
    cache = Cache(str(tmp_path))
    cache.ensure_layout()
    fd = _hold(cache, "img")
    try:
        with pytest.raises(LockTimeout):
            with cache.image_lock("img", 0.2, ready=lambda: True):
                pass
    finally:
        os.close(fd)


def test_other_thread_waits_for_release(tmp_path):
    cache = Cache(str(tmp_path))
    cache.ensure_layout()
    fd = _hold(cache, "img")
    got = []

    def waiter():
        with cache.image_lock("img", 0.2, ready=lambda: True) as must_stage:
            got.append(must_stage)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)  # past the timeout, which a non-main thread cannot enforce
    assert got == []
    os.close(fd)
    t.join(10)
    assert got == [False]  # woken by the release, found the image "ready"

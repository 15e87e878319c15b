"""Shared fixtures: a real HTTP server, site configs in temp dirs. The helpers they and
the benchmarks share are in tests/support."""
import pytest
import yaml

from tests.support.httpserver import Server


def pytest_addoption(parser):
    parser.addoption("--ge-flavor", dest="ge_flavor", default=None,
                     help="Grid Engine engines for tests/ge, comma-separated: soge,ocs "
                          "(default: both, or $GE_FLAVORS)")


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    srv = Server(str(root))
    yield srv
    srv.close()


@pytest.fixture
def make_config(tmp_path):
    """make_config(images, **sections) -> path of a config.yaml with a private cache.

    Fetch retries and backoff are shortened so fault tests finish quickly, and images
    pulled a moment ago may be evicted at once (cache.evict_grace 0), and a cache full
    of images in use fails at once instead of waiting for room (cache.room_wait 0).
    """
    def make(images=None, cache=None, fetch=None, name="config.yaml", **extra):
        cfg = {
            "cache": {"root": str(tmp_path / "cache"), "max_size": "10G", "lock_wait": 120,
                      "min_free": 0, "evict_grace": 0, "room_wait": 0, **(cache or {})},
            "fetch": {"retries": 1, "backoff": 0.05, "backoff_max": 0.1, "connect_timeout": 5,
                      "read_timeout": 5, "progress_interval": 1, **(fetch or {})},
            "log": {"file": str(tmp_path / "sge-image.log")},
            "images": images or {},
            # No node agent, no peers (tests/test_agent.py runs those): a pull here
            # must not ask this machine's Grid Engine for peers.
            "agent": {"enabled": False},
            **extra,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return str(path)
    return make

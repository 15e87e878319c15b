"""The http loop's receive low-water mark: raised for a body that arrives in small
pieces, dropped again for one too slow to fill it, and the bytes are right either way
(run in-process against the fault-injecting server, which writes 64 KiB pieces)."""
import pytest

from sge.fetch import httpwire
from tests.support.common import payload, sha256
from tests.support.httpserver import Fault
from tests.support.servers_oci_s3 import run_fetch

MB = 1 << 20


@pytest.fixture
def low_water(monkeypatch):
    """Record what each body's _LowWater did."""
    seen = []
    real_init = httpwire._LowWater.__init__

    def init(self, resp):
        real_init(self, resp)
        self.polls = 0
        seen.append(self)
    real_wait = httpwire._LowWater.wait

    def wait(self, wanted):
        if self.active:
            self.polls += 1
        real_wait(self, wanted)
    monkeypatch.setattr(httpwire._LowWater, "__init__", init)
    monkeypatch.setattr(httpwire._LowWater, "wait", wait)
    monkeypatch.setattr(httpwire, "SMALL_READS", 4)
    return seen


def test_small_pieces_raise_the_low_water_mark(tmp_path, http_server, low_water, monkeypatch):
    monkeypatch.setattr(httpwire, "LOWAT", 256 << 10)
    data = payload(8 * MB)
    http_server.add_file("paced.sif", data)
    http_server.faults["paced.sif"] = Fault(rate=32 * MB)
    digest, got, _ = run_fetch(tmp_path, http_server.url("paced.sif"), sha256=sha256(data),
                               size=len(data))
    assert got == data and digest == sha256(data)
    (lw,) = low_water
    assert lw.active and lw.polls > 4 and lw.current == 1  # raised, used, reset at the end


def test_stream_too_slow_for_it_is_read_as_it_comes(tmp_path, http_server, low_water,
                                                    monkeypatch):
    monkeypatch.setattr(httpwire, "LOWAT", 512 << 10)
    data = payload(1 * MB + 12345)
    http_server.add_file("slow.sif", data)
    http_server.faults["slow.sif"] = Fault(rate=1 * MB)
    digest, got, _ = run_fetch(tmp_path, http_server.url("slow.sif"), sha256=sha256(data),
                               size=len(data))
    assert got == data
    (lw,) = low_water
    assert lw.polls >= 1 and not lw.active and not lw.usable and lw.current == 1

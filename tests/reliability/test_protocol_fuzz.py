"""Protocol fuzzing: random and malformed streams into the load sensor and the JSV.

Both are long-lived processes Grid Engine talks to over pipes; a crash or a hang breaks
the execd (sensor) or blocks a qmaster thread (JSV). After any input they must answer
the next well-formed request correctly, never write to stderr, never exit early.
The line-per-example JSV fuzz lives in tests/test_jsv.py; here the JSV gets byte
streams cut at arbitrary points (lines split across writes, CR/LF mixes, bad UTF-8).
"""
import os
import select
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.reliability.conftest import SEED
from tests.support.common import ROOT, cli, payload, sha256
from tests.test_jsv import COMMANDS, CORRECT_DEMO, INFO_DEMO, JsvProcess, job

HOST = "nodeX"


class SensorProcess:
    """The load sensor as execd runs it: a line in, a report out. The UTF-8 strict
    stdin stands for a site whose execd runs with a UTF-8 locale such as en_US.UTF-8."""

    def __init__(self, cfg):
        env = dict(os.environ, HOST=HOST, PYTHONIOENCODING="utf-8:strict")
        self.proc = subprocess.Popen([sys.executable, "-m", "sge.ge.loadsensor", "--config", cfg],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self.buf = b""

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the sensor did not answer in time (hung?)")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"the sensor exited ({self.proc.wait()})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def report(self, timeout=10.0):
        assert self.readline(timeout) == "begin"
        values = {}
        while True:
            line = self.readline(timeout)
            if line == "end":
                return values
            assert len(line.encode()) < 1000, line
            host, name, value = line.split(":", 2)
            assert host == HOST and name and value, line
            values[name] = value

    def close(self):
        self.send(b"quit\n")
        assert self.proc.wait(timeout=10) == 0
        assert self.proc.stderr.read() == b""
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture(scope="module")
def sensor_config(tmp_path_factory):
    import yaml
    d = tmp_path_factory.mktemp("sensor")
    data = payload(5000, seed=SEED)
    (d / "warm.sif").write_bytes(data)
    cfg = d / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": {"root": str(d / "cache"), "max_size": "1G", "min_free": 0},
        "log": {"file": str(d / "log")},
        "images": {"warm": {"url": str(d / "warm.sif"), "sha256": sha256(data)},
                   "cold": {"url": str(d / "cold.sif"), "sha256": "cd" * 32}}}))
    assert cli(str(cfg), "pull", "warm", "-q").returncode == 0
    return str(cfg)


@pytest.fixture(scope="module")
def sensor(sensor_config):
    s = SensorProcess(sensor_config)
    yield s
    s.close()


def _good(values):
    assert values.get("img_warm") == "1" and "img_cold" not in values, values
    assert abs(int(values["img_sensor_time"]) - time.time()) < 60
    assert int(values["img_cache_free"]) > 0


lines = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" "))


@seed(SEED)
@hsettings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(lines, st.sampled_from([b"", b" ", b"\r", b"begin", b"end", b"QUIT",
                                                  b"quit now", b"\xff\xfe", b"\x00",
                                                  b"quit\x00", b"x" * 70000])), max_size=12))
def test_sensor_answers_every_line_and_survives_garbage(sensor, garbage):
    garbage = [g for g in garbage if g.strip() != b"quit"]
    sensor.send(b"".join(g + b"\n" for g in garbage) + b"\n")
    for _ in garbage:  # one full report per line, whatever the line said
        sensor.report()
    _good(sensor.report())
    assert sensor.proc.poll() is None


def test_sensor_survives_invalid_utf8_under_a_strict_locale(sensor_config):
    """Regression: a text-mode stdin died on the first byte that is not UTF-8."""
    s = SensorProcess(sensor_config)
    s.send(b"\xff\xfe\xfd\n\n")
    s.report()
    _good(s.report())
    s.close()


def test_sensor_eof_mid_line_exits_cleanly(sensor_config):
    s = SensorProcess(sensor_config)
    s.send(b"\n")
    _good(s.report())
    s.send(b"half a line")
    s.proc.stdin.close()
    s.report()  # the partial line still counts as a request
    assert s.proc.wait(timeout=10) == 0
    assert s.proc.stderr.read() == b""


# ------------------------------------------------------------------ JSV

@pytest.fixture(scope="module")
def jsv(tmp_path_factory):
    import yaml
    d = tmp_path_factory.mktemp("jsv")
    cfg = d / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": {"root": str(d / "cache")}, "log": {"file": str(d / "log")},
        "images": {"demo": {"url": "file:///demo.sif", "sha256": "ab" * 32}}}))
    p = JsvProcess(str(cfg))
    yield p
    p.close()


fragments = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"\n", b"\r\n", b"\r", b"START", b"BEGIN", b"PARAM ", b"ENV ADD ",
                     b"PARAM l_hard image=", b"ENV ADD SGE_IMAGE ", b"demo", b"../x", b" ",
                     b"\xff", b"\x00", b"\xed\xa0\x80", b"PARAM CONTEXT server", b"SHOW"]))


def _commands(stream):
    out = []
    for raw in stream.split(b"\n"):
        cmd = raw.split(b" ", 1)[0]
        out.append(cmd[:-1] if cmd.endswith(b"\r") else cmd)
    return out


@seed(SEED)
@hsettings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragments, max_size=40), st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_jsv_byte_streams_cut_anywhere(jsv, parts, cuts):
    stream = b"".join(parts)
    # A QUIT line would (rightly) end the process: keep the fuzz about everything else.
    lines = [ln for ln, c in zip(stream.split(b"\n"), _commands(stream)) if c != b"QUIT"]
    stream = b"\n".join(lines) + b"\n"
    begins = sum(1 for c in _commands(stream) if c == b"BEGIN")
    good = b"".join(ln.encode() + b"\n" for ln in job({"l_hard": "image=demo,h_rt=9"}))
    data = stream + good
    pos, i = 0, 0
    while pos < len(data):  # written in pieces: lines arrive split across reads
        n = cuts[i % len(cuts)]
        _raw_send(jsv, data[pos:pos + n])
        pos += n
        i += 1
    out = []
    for _ in range(begins + 1):  # exactly one RESULT per BEGIN, none lost, no hang
        out += jsv.until_result(timeout=5)
    for ln in out:
        assert ln.split(" ", 1)[0] in COMMANDS, ln
    assert out[-6:] == ["STARTED", "PARAM l_hard h_rt=9", "PARAM l_soft img_demo=true",
                        "ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]
    assert jsv.proc.poll() is None


def _raw_send(jsv, data):
    jsv.proc.stdin.write(data)
    jsv.proc.stdin.flush()

"""JSV: the real protocol loop in a subprocess, driven by scripted Grid Engine transcripts.

Every test checks the exact answer lines and that stderr stays empty: Grid Engine
rejects the job and restarts the JSV on any stderr line, and rejects it on any
line that is not a JSV command.
"""
import os
import select
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sge.ge import jsv as jsvmod
from sge.ge.jsv_protocol import MAX_OUT_LINE, Result, clean_text
from tests.support.common import ROOT

DIGEST = "ab" * 32
COMMANDS = ("SEND", "STARTED", "PARAM", "ENV", "LOG", "RESULT")
INFO_DEMO = "LOG INFO sge-image jsv: job 376 of root: image demo -> soft img_demo=true"
CORRECT_DEMO = "RESULT STATE CORRECT sge-image: image demo prefers hosts that have it cached"


@pytest.fixture
def config(make_config, tmp_path):
    return make_config(images={
        "demo": {"url": f"file://{tmp_path}/demo.sif", "sha256": DIGEST, "size": 10},
        "Tool.v2": {"url": f"file://{tmp_path}/tool.sif", "sha256": DIGEST},
        "other": {"url": f"file://{tmp_path}/other.sif", "sha256": DIGEST},
    })


@pytest.fixture
def strict_config(make_config, tmp_path):
    return make_config(images={"demo": {"url": f"file://{tmp_path}/d.sif", "sha256": DIGEST}},
                       jsv={"strict": True}, name="strict.yaml")


def job(params=None, env=None, context="server", job_id="376", begin=True):
    """A transcript for one job, in qmaster's order (REPORT §7)."""
    lines = ["START", "PARAM VERSION 1.0", f"PARAM CONTEXT {context}",
             f"PARAM CLIENT {'qmaster' if context == 'server' else 'qsub'}",
             "PARAM USER root", "PARAM GROUP root"]
    if job_id and context == "server":
        lines.append(f"PARAM JOB_ID {job_id}")
    lines += ["PARAM CMDNAME job.sh", "PARAM CMDARGS 0"]
    lines += [f"PARAM {k} {v}" for k, v in (params or {}).items()]
    lines += [f"ENV ADD {k} {v}" for k, v in (env or {}).items()]
    if begin:
        lines.append("BEGIN")
    return lines


def run_jsv(config, lines, quit=True, timeout=30, extra_args=()):
    """Feed `lines` to `sge-image --config CONFIG jsv`; -> stdout lines. Asserts a
    clean exit and an empty stderr."""
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    if quit:
        data += b"QUIT\n"
    p = subprocess.run([sys.executable, "-m", "sge.cli", "--config", config, "jsv", *extra_args],
                       input=data, capture_output=True, timeout=timeout, cwd=ROOT)
    assert p.stderr == b""
    assert p.returncode == 0
    out = p.stdout.decode("utf-8", "surrogateescape").split("\n")
    assert out[-1] == ""
    out = out[:-1]
    for ln in out:  # only JSV commands ever reach Grid Engine, each a sane line
        assert ln.split(" ", 1)[0] in COMMANDS, ln
        assert len(ln.encode("utf-8", "surrogateescape")) < MAX_OUT_LINE
    return out


def answers(out):
    """stdout lines -> the answer block of each job (lines after STARTED up to RESULT)."""
    blocks, cur = [], None
    for ln in out:
        if ln == "STARTED":
            cur = []
        elif cur is not None:
            cur.append(ln)
            if ln.startswith("RESULT "):
                blocks.append(cur)
                cur = None
    return blocks


def one(config, params=None, env=None, context="server"):
    out = run_jsv(config, job(params, env, context))
    assert out[:2] == ["SEND ENV", "STARTED"]
    [block] = answers(out)
    return block


# ------------------------------------------------------------ the mapping

def test_report_transcript(config):
    """The exact transcript of REPORT §7 (qsub -t 1-3 -l image=demo,h_rt=100 -soft -l arch=lx* -v FOO=1)."""
    lines = ["START", "PARAM VERSION 1.0", "PARAM CONTEXT server", "PARAM CLIENT qmaster",
             "PARAM USER root", "PARAM GROUP root", "PARAM JOB_ID 376", "PARAM CMDNAME job.sh",
             "PARAM CMDARGS 0", "PARAM A sge", "PARAM j y", "PARAM l_hard image=demo,h_rt=100",
             "PARAM l_soft arch=lx*", "PARAM M root@vm", "PARAM N job.sh", "PARAM o /out/jsv/",
             "PARAM t_min 1", "PARAM t_max 3", "PARAM t_step 1", "ENV ADD TERM ",
             "ENV ADD FOO 1", "BEGIN"]
    assert run_jsv(config, lines) == [
        "SEND ENV", "STARTED",
        "PARAM l_hard h_rt=100",
        "PARAM l_soft arch=lx*,img_demo=true",
        "ENV ADD SGE_IMAGE demo",
        INFO_DEMO,
        CORRECT_DEMO,
    ]


def test_job_without_image_is_accepted_without_reading_the_config(tmp_path):
    missing = str(tmp_path / "no-such-config.yaml")
    out = run_jsv(missing, job({"l_hard": "h_rt=100,mem=1G", "l_soft": "arch=lx*"},
                               {"TERM": "", "FOO": "1"}))
    assert out == ["SEND ENV", "STARTED", "RESULT STATE ACCEPT"]


def test_only_request_deletes_the_hard_list(config):
    assert one(config, {"l_hard": "image=demo"}) == [
        "PARAM l_hard ", "PARAM l_soft img_demo=true", "ENV ADD SGE_IMAGE demo",
        INFO_DEMO, CORRECT_DEMO]


def test_other_entries_stay_byte_identical_and_in_order(config):
    hard = "h_rt=100,image=demo,mem_free=1G,weird=a=b=c,x==y,arch=lx*|sol*"
    soft = "arch=lx*,q=a=,tmp=TRUE"
    assert one(config, {"l_hard": hard, "l_soft": soft})[:2] == [
        "PARAM l_hard h_rt=100,mem_free=1G,weird=a=b=c,x==y,arch=lx*|sol*",
        "PARAM l_soft arch=lx*,q=a=,tmp=TRUE,img_demo=true"]


def test_ocs_sends_global_requests_twice_and_takes_corrections_by_classic_name(config):
    """Open Cluster Scheduler 9: `-l image=demo,h_rt=100` arrives as `global_l_hard` AND
    `l_hard`; the answer corrects `l_hard` only (OCS applies it to the global scope)."""
    assert one(config, {"global_l_hard": "image=demo,h_rt=100", "l_hard": "image=demo,h_rt=100"}) == [
        "PARAM l_hard h_rt=100", "PARAM l_soft img_demo=true", "ENV ADD SGE_IMAGE demo",
        INFO_DEMO, CORRECT_DEMO]


def test_ocs_master_scope_image_is_mapped(config):
    """Open Cluster Scheduler 9: `qsub -pe P 4 -scope master -l image=demo,h_vmem=1G`. No
    host reports `image`, so left there the job would pend forever; the master task's
    host is the one whose prolog stages the image."""
    assert one(config, {"master_l_hard": "image=demo,h_vmem=1G", "pe_name": "mpi"}) == [
        "PARAM l_soft img_demo=true", "PARAM master_l_hard h_vmem=1G",
        "ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]
    assert one(config, {"master_l_hard": "image=demo"})[:2] == [
        "PARAM l_soft img_demo=true", "PARAM master_l_hard "]


def test_ocs_slave_scope_image_is_rejected(config):
    """Open Cluster Scheduler 9: no prolog runs for slave tasks, so `-scope slave -l
    image=demo` could never be staged: rejected with one line that says what to use."""
    [result] = one(config, {"slave_l_hard": "image=demo"})
    assert result.startswith("RESULT STATE REJECT ") and "-scope master" in result


def test_ocs_image_in_two_scopes_counts_once(config):
    assert one(config, {"l_hard": "image=demo", "master_l_hard": "image=demo"})[:3] == [
        "PARAM l_hard ", "PARAM l_soft img_demo=true", "PARAM master_l_hard "]
    assert one(config, {"l_hard": "image=demo", "master_l_hard": "image=other"})[0].startswith(
        "RESULT STATE REJECT sge-image: a job can use one image")


def test_image_in_soft_list_is_treated_like_hard(config):
    assert one(config, {"l_hard": "h_rt=10", "l_soft": "arch=lx*,image=demo"}) == [
        "PARAM l_soft arch=lx*,img_demo=true", "ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]


@pytest.mark.parametrize("entry", ["img=demo", "IMAGE=demo", "Img=demo"])
def test_shortcut_and_case(config, entry):
    assert one(config, {"l_hard": entry}) == [
        "PARAM l_hard ", "PARAM l_soft img_demo=true", "ENV ADD SGE_IMAGE demo",
        INFO_DEMO, CORRECT_DEMO]


def test_same_image_twice_is_one_request(config):
    assert one(config, {"l_hard": "image=demo", "l_soft": "img=demo"}) == [
        "PARAM l_hard ", "PARAM l_soft img_demo=true", "ENV ADD SGE_IMAGE demo",
        INFO_DEMO, CORRECT_DEMO]


def test_name_case_is_kept_but_complex_is_lower_case(config):
    assert one(config, {"l_hard": "image=Tool.v2"}, context="client") == [
        "PARAM l_hard ", "PARAM l_soft img_tool.v2=true", "ENV ADD SGE_IMAGE Tool.v2",
        "RESULT STATE CORRECT sge-image: image Tool.v2 prefers hosts that have it cached"]


@pytest.mark.parametrize("params, expect", [
    # already soft: no duplicate, image entry still removed
    ({"l_hard": "image=demo", "l_soft": "img_demo=true"}, ["PARAM l_hard "]),
    # any spelling of the warm complex counts
    ({"l_hard": "image=demo,IMG_DEMO=1"}, ["PARAM l_hard IMG_DEMO=1"]),
    ({"l_soft": "img_demo,image=demo"}, ["PARAM l_soft img_demo"]),
])
def test_existing_warm_complex_is_not_duplicated(config, params, expect):
    assert one(config, params) == expect + ["ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]


def test_strict_puts_the_warm_complex_in_the_hard_list(strict_config):
    info = "LOG INFO sge-image jsv: job 376 of root: image demo -> hard img_demo=true"
    assert one(strict_config, {"l_hard": "image=demo,h_rt=5", "l_soft": "arch=lx*"}) == [
        "PARAM l_hard h_rt=5,img_demo=true", "ENV ADD SGE_IMAGE demo", info, CORRECT_DEMO]
    # a soft warm request moves to the hard list instead of appearing twice
    assert one(strict_config, {"l_soft": "img_demo=true,arch=lx*,image=demo"}) == [
        "PARAM l_hard img_demo=true", "PARAM l_soft arch=lx*", "ENV ADD SGE_IMAGE demo",
        info, CORRECT_DEMO]


def test_array_parameters_pass_through(config):
    block = one(config, {"l_hard": "image=demo", "t_min": "1", "t_max": "100", "t_step": "3"})
    assert not any(ln.startswith("PARAM t_") for ln in block)
    assert block[-1] == CORRECT_DEMO


def test_client_context_sends_no_log_lines(config):
    # qsub prints LOG text on its stdout, which would break `qsub -terse`
    assert one(config, {"l_hard": "image=demo,h_rt=1"}, {"TERM": ""}, context="client") == [
        "PARAM l_hard h_rt=1", "PARAM l_soft img_demo=true", "ENV ADD SGE_IMAGE demo",
        CORRECT_DEMO]


def test_second_pass_after_client_jsv_accepts(config, strict_config):
    """The server JSV sees what the client JSV produced: no changes, ACCEPT."""
    mapped = {"l_hard": "h_rt=100", "l_soft": "arch=lx*,img_demo=true"}
    env = {"TERM": "", "FOO": "2", "SGE_IMAGE": "demo"}
    assert one(config, mapped, env) == ["RESULT STATE ACCEPT"]
    assert one(config, {"l_soft": "img_demo=true"}, env) == ["RESULT STATE ACCEPT"]
    assert one(strict_config, {"l_hard": "img_demo=true"}, env) == ["RESULT STATE ACCEPT"]


def test_user_environment_is_left_alone(config):
    block = one(config, {"l_hard": "image=demo"}, {"TERM": "", "FOO": "1", "PATH": "/bin:/usr/bin"})
    assert [ln for ln in block if ln.startswith("ENV")] == ["ENV ADD SGE_IMAGE demo"]


# ------------------------------------------------------------ SGE_IMAGE without -l image

def test_env_image_is_validated_and_mapped(config):
    assert one(config, {"l_hard": "h_rt=1"}, {"SGE_IMAGE": "demo"}) == [
        "PARAM l_soft img_demo=true", INFO_DEMO, CORRECT_DEMO]


@pytest.mark.parametrize("value, words", [
    ("../../etc", "is invalid"), ("nope", "not in the catalog"), ("a;rm -rf", "is invalid")])
def test_env_image_cannot_bypass_validation(config, value, words):
    [line] = one(config, {"l_hard": "h_rt=1"}, {"SGE_IMAGE": value})
    assert line.startswith("RESULT STATE REJECT sge-image: SGE_IMAGE in the job environment: ")
    assert words in line


def test_empty_env_image_is_removed(config):
    assert one(config, {}, {"SGE_IMAGE": ""}) == [
        "ENV DEL SGE_IMAGE", "RESULT STATE CORRECT sge-image: removed the empty SGE_IMAGE"]


def test_l_image_wins_over_env(config):
    assert one(config, {"l_hard": "image=demo"}, {"SGE_IMAGE": "other"})[2] == \
        "ENV ADD SGE_IMAGE demo"


# ------------------------------------------------------------ bad requests: one clear line

@pytest.mark.parametrize("value, words", [
    ("", "an image name must not be empty"),
    ("../x", "image name '../x' is invalid"),
    ("/etc/passwd", "is invalid"),
    ("a;b", "is invalid"),
    ("$(id)", "is invalid"),
    ("`id`", "is invalid"),
    ("a|b", "is invalid"),
    ("a b", "is invalid"),
    ("x" * 10000, "is longer than 64 characters"),
    ("é", "is invalid"),
    ("дemo", "is invalid"),
    ("demo\x1b[31m", "is invalid"),
    ("%n%n%s", "is invalid"),
    ("nope", "image 'nope' is not in the catalog; `sge-image status --catalog` lists"),
    ("DEMO", "not in the catalog"),
    ("TRUE", "not in the catalog"),   # `-l image` without a value arrives as image=TRUE
    ("demo=x", "is invalid"),
])
@pytest.mark.parametrize("context", ["server", "client"])
def test_bad_names_are_rejected_with_one_line(config, value, words, context):
    [line] = one(config, {"l_hard": f"h_rt=1,image={value}"}, context=context)
    assert line.startswith("RESULT STATE REJECT sge-image: -l image: ")
    assert words in line
    assert len(line) < 600 and line.isprintable() and "%" not in line


def test_two_images_are_rejected(config):
    [line] = one(config, {"l_hard": "image=demo", "l_soft": "img=other"})
    assert line == ("RESULT STATE REJECT sge-image: a job can use one image, but this one "
                    "requests 'demo' and 'other'")


def test_correction_too_long_for_qmaster_is_rejected(config):
    # qmaster reads JSV lines into a 10,000-byte buffer
    hard = ",".join(f"r{i}=1" for i in range(2000)) + ",image=demo"
    [line] = one(config, {"l_hard": hard})
    assert line.startswith("RESULT STATE REJECT ") and "too long" in line


# ------------------------------------------------------------ catalog trouble

def test_unreadable_catalog_rejects_image_jobs_and_keeps_serving(tmp_path, make_config):
    broken = tmp_path / "broken.yaml"
    broken.write_text("images: [unclosed\n")
    lines = (job({"l_hard": "image=demo"}) + job({"l_hard": "h_rt=1"})
             + job({"l_hard": "image=../x"}))
    blocks = answers(run_jsv(str(broken), lines))
    assert blocks[0][0].startswith("RESULT STATE REJECT_WAIT sge-image: cannot check image "
                                   "'demo': the image catalog is unavailable (")
    assert "malformed YAML" in blocks[0][0]
    assert blocks[1] == ["RESULT STATE ACCEPT"]
    # a bad name is refused without needing the catalog
    assert blocks[2][0].startswith("RESULT STATE REJECT sge-image: -l image: image name '../x'")


def test_missing_config_then_fixed(tmp_path, make_config):
    cfg = tmp_path / "late.yaml"
    p = JsvProcess(str(cfg))
    try:
        block = p.job(job({"l_hard": "image=demo"}))
        assert block[0].startswith("RESULT STATE REJECT_WAIT ") and "no such file" in block[0]
        good = make_config(images={"demo": {"url": "file:///d.sif", "sha256": DIGEST}})
        os.replace(good, cfg)
        assert p.job(job({"l_hard": "image=demo"}))[-1] == CORRECT_DEMO
    finally:
        p.close()


def test_catalog_edits_are_picked_up(tmp_path, make_config):
    """A long-lived server JSV follows the catalog (re-read every RELOAD_INTERVAL)."""
    cfg = make_config(images={"demo": {"url": "file:///d.sif", "sha256": DIGEST}})
    p = JsvProcess(cfg)
    try:
        assert p.job(job({"l_hard": "image=new"}))[0].startswith("RESULT STATE REJECT ")
        make_config(images={"demo": {"url": "file:///d.sif", "sha256": DIGEST},
                            "new": {"url": "file:///n.sif", "sha256": DIGEST}})
        time.sleep(jsvmod.RELOAD_INTERVAL + 0.2)
        assert p.job(job({"l_hard": "image=new"}))[-1].startswith("RESULT STATE CORRECT ")
        # a config broken later: the last good catalog stays in use
        with open(cfg, "w") as f:
            f.write("images: [broken\n")
        time.sleep(jsvmod.RELOAD_INTERVAL + 0.2)
        assert p.job(job({"l_hard": "image=new"}))[-1].startswith("RESULT STATE CORRECT ")
    finally:
        p.close()


def test_hung_catalog_read_times_out(tmp_path):
    """A config that blocks (here a FIFO nobody writes) costs at most the timeout,
    answers REJECT_WAIT, and the JSV keeps serving."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    p = JsvProcess(str(fifo))
    try:
        t0 = time.monotonic()
        block = p.job(job({"l_hard": "image=demo"}), timeout=jsvmod.DEFAULT_TIMEOUT + 4)
        took = time.monotonic() - t0
        assert block == ["RESULT STATE REJECT_WAIT sge-image: checking the image request took "
                         "longer than 5 s; submit again later or tell your administrator"]
        assert jsvmod.DEFAULT_TIMEOUT - 0.5 < took < jsvmod.DEFAULT_TIMEOUT + 3
        assert p.job(job({"l_hard": "h_rt=1"}), timeout=2) == ["RESULT STATE ACCEPT"]
    finally:
        p.close()


def test_rejections_go_to_the_log_file(config, tmp_path):
    one(config, {"l_hard": "image=nope"})
    log = (tmp_path / "sge-image.log").read_text()
    assert "REJECT job 376 of root: sge-image: -l image: image 'nope' is not in the catalog" in log


# ------------------------------------------------------------ protocol robustness

GARBAGE = [
    "FOO", "ERROR something", "PARAM", "PARAM ", "ENV", "ENV ADD", "ENV XYZ a b",
    "RESULT STATE ACCEPT", "LOG INFO hi", "STARTED", "SEND ENV", " START", "start",
    "", "   ", "\t", "QUIT ", "BEGINX",
]


def test_garbage_between_jobs_then_a_good_job(config):
    lines = GARBAGE[:-2] + ["\x00\x01", b"\xff\xfe binary \xc3"] + job({"l_hard": "image=demo"})
    out = run_jsv(config, [ln for ln in lines if ln != "QUIT "])
    # no context known yet: bad lines go to the log file only, nothing to stdout
    assert out == ["SEND ENV", "STARTED", "PARAM l_hard ", "PARAM l_soft img_demo=true",
                   "ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]


def test_garbage_inside_a_server_job_is_logged_and_ignored(config):
    lines = job({"l_hard": "image=demo"}, begin=False) + ["FOO bar", "ENV XYZ a", "PARAM", "BEGIN"]
    out = run_jsv(config, lines)
    logs = [ln for ln in out if ln.startswith("LOG ERROR ")]
    assert len(logs) == 3
    assert all(ln.startswith("LOG ERROR sge-image jsv: ignored input: ") for ln in logs)
    assert out[-1] == CORRECT_DEMO
    assert not any(ln.startswith("ERROR") for ln in out)


def test_garbage_inside_a_client_job_stays_off_stdout(config):
    lines = job({"l_hard": "h_rt=1"}, context="client", begin=False) + ["FOO bar", "BEGIN"]
    assert run_jsv(config, lines) == ["SEND ENV", "STARTED", "RESULT STATE ACCEPT"]


def test_every_begin_gets_exactly_one_result(config):
    lines = ["BEGIN", "BEGIN", "PARAM l_hard image=demo", "BEGIN", "START", "START", "BEGIN"]
    out = run_jsv(config, lines)
    assert [ln for ln in out if ln.startswith("RESULT")] == [
        "RESULT STATE ACCEPT", "RESULT STATE ACCEPT",
        "RESULT STATE CORRECT sge-image: image demo prefers hosts that have it cached",
        "RESULT STATE ACCEPT"]


def test_overlong_input_line_rejects_only_its_job(config):
    huge = "PARAM l_hard " + "x" * (2 << 20)
    lines = job({}, begin=False) + [huge, "BEGIN"] + job({"l_hard": "image=demo"})
    blocks = answers(run_jsv(config, lines, timeout=60))
    assert blocks[0][-1].startswith("RESULT STATE REJECT job description was damaged")
    assert blocks[1][-1] == CORRECT_DEMO


def test_odd_bytes_in_other_entries_pass_through(config):
    out = run_jsv(config, job(begin=False) + [b"PARAM l_hard image=demo,a=x\r,b=\xff\xfe",
                                              "BEGIN"])
    assert out[2] == "PARAM l_hard a=x\r,b=\udcff\udcfe"  # the same bytes
    # a NUL would cut qmaster's C string: refused with one clear line instead
    [line] = one(config, {"l_hard": "image=demo,a=\x00"})
    assert line.startswith("RESULT STATE REJECT the job cannot be corrected")


def test_crlf_transcript_is_understood(config):
    lines = [ln + "\r" if " " not in ln else ln for ln in job({"l_hard": "h_rt=1"})]
    assert run_jsv(config, lines) == ["SEND ENV", "STARTED", "RESULT STATE ACCEPT"]


def test_eof_without_quit_exits_cleanly(config):
    assert run_jsv(config, job({"l_hard": "image=demo"}), quit=False)[-1] == CORRECT_DEMO


def test_quit_ends_the_process_at_once(config):
    p = JsvProcess(config)
    p.send(["QUIT"])
    assert p.proc.wait(timeout=5) == 0
    assert p.proc.stderr.read() == b""


def test_config_option_after_the_subcommand(config, tmp_path):
    out = run_jsv(str(tmp_path / "missing.yaml"), job({"l_hard": "image=demo"}),
                  extra_args=["--config", config])
    assert out[-1] == CORRECT_DEMO


def test_show_lists_the_job_in_server_context(config):
    out = run_jsv(config, job({"l_hard": "image=demo"}, begin=False) + ["SHOW", "BEGIN"])
    assert "LOG INFO param l_hard=image=demo" in out


# ------------------------------------------------------------ the pure mapping

class FakeSettings:
    def __init__(self, names, strict=False):
        from sge.config import Image
        self.images = {n: Image(n, ["file:///x"], DIGEST) for n in names}
        from sge.config import CacheSettings, JsvSettings
        self.jsv = JsvSettings({"strict": strict, "timeout": 5.0})
        self.cache = CacheSettings({})

    def image(self, name):
        from sge.config import Settings
        return Settings.image(self, name)


def never():
    raise AssertionError("the catalog must not be read for this job")


def test_map_image_reads_no_catalog_for_plain_jobs():
    assert jsvmod.map_image({"l_hard": "h_rt=1", "l_soft": "img_x=true"}, {"TERM": ""},
                            never) == Result.accept()
    # a bad name is refused before the catalog is needed
    assert jsvmod.map_image({"l_hard": "image=../x"}, {}, never).state == "REJECT"


def test_map_image_pure():
    r = jsvmod.map_image({"l_hard": "image=demo,h_rt=1", "USER": "u"}, {},
                         lambda: FakeSettings(["demo"]))
    assert r.state == "CORRECT"
    assert r.params == [("l_hard", "h_rt=1"), ("l_soft", "img_demo=true")]
    assert r.env == [("ADD", "SGE_IMAGE", "demo")]


def test_clean_text():
    assert clean_text("a\nb\x00c") == "a?b?c"
    assert clean_text("x" * 1000, 20) == "x" * 17 + "..."
    assert clean_text("50%", format_safe=True) == "50?"


# ------------------------------------------------------------ random input

class JsvProcess:
    """A long-lived JSV process, talked to line by line with deadlines."""

    def __init__(self, config):
        self.proc = subprocess.Popen([sys.executable, "-m", "sge.cli", "--config", config, "jsv"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self.buf = b""

    def send(self, lines):
        self.proc.stdin.write(b"".join(
            (ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
        self.proc.stdin.flush()

    def readline(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the JSV did not answer in time (hung?)")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("the JSV exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "surrogateescape")

    def until_result(self, timeout=5.0):
        out = []
        while not out or not out[-1].startswith("RESULT "):
            out.append(self.readline(timeout))
        return out

    def job(self, lines, timeout=5.0):
        """Send one job; -> its answer block (after SEND ENV / STARTED)."""
        self.send(lines)
        assert self.readline(timeout) == "SEND ENV"
        assert self.readline(timeout) == "STARTED"
        return self.until_result(timeout)

    def close(self):
        try:
            self.send(["QUIT"])
        except BrokenPipeError:
            pass
        assert self.proc.wait(timeout=10) == 0
        assert self.proc.stderr.read() == b""
        self.proc.stdout.close()
        self.proc.stdin.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def long_lived(tmp_path_factory):
    import yaml
    d = tmp_path_factory.mktemp("jsv")
    cfg = d / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": {"root": str(d / "cache")}, "log": {"file": str(d / "log")},
        "images": {"demo": {"url": "file:///demo.sif", "sha256": DIGEST}}}))
    p = JsvProcess(str(cfg))
    yield p
    p.close()


words = st.sampled_from(["START", "BEGIN", "PARAM", "ENV", "ADD", "MOD", "DEL", "LOG", "RESULT",
                         "SHOW", "STARTED", "CONTEXT", "server", "client", "l_hard", "l_soft",
                         "image=demo", "image=../x", "img=", "SGE_IMAGE", "=", ",", "", " "])
structured = st.lists(st.one_of(words, st.text(max_size=12)), min_size=1, max_size=6).map(" ".join)
raw = st.binary(max_size=200)


def _line_bytes(x):
    b = x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
    return b.replace(b"\n", b" ")


@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(structured, raw), max_size=30))
def test_random_input_never_breaks_the_loop(long_lived, garbage):
    def cmd(b):
        c = b.split(b" ", 1)[0]
        return c[:-1] if c.endswith(b"\r") else c
    lines = [b for b in map(_line_bytes, garbage) if cmd(b) != b"QUIT"]
    begins = sum(1 for b in lines if cmd(b) == b"BEGIN")
    long_lived.send(lines + [ln.encode() for ln in job({"l_hard": "image=demo,h_rt=9"})])
    out = []
    for _ in range(begins + 1):  # exactly one RESULT per BEGIN, none lost, no hang
        out += long_lived.until_result(timeout=5)
    for ln in out:
        assert ln.split(" ", 1)[0] in COMMANDS, ln
    assert out[-6:] == ["STARTED", "PARAM l_hard h_rt=9", "PARAM l_soft img_demo=true",
                        "ENV ADD SGE_IMAGE demo", INFO_DEMO, CORRECT_DEMO]
    assert long_lived.proc.poll() is None


# ------------------------------------------------------------ lifecycle (issue 9)

def test_jsv_url_names_its_launcher(tmp_path):
    launcher = tmp_path / "jsv"
    launcher.write_text("#!/bin/sh\n")
    assert jsvmod.jsv_url_names(str(launcher), str(launcher))
    assert jsvmod.jsv_url_names(f"script:{launcher}", str(launcher))
    assert jsvmod.jsv_url_names(f"script:sgeadmin@{launcher}", str(launcher))
    assert jsvmod.jsv_url_names(f"sgeadmin@{launcher}", str(launcher))
    assert not jsvmod.jsv_url_names("none", str(launcher))
    assert not jsvmod.jsv_url_names("NONE", str(launcher))
    assert not jsvmod.jsv_url_names(str(tmp_path / "other"), str(launcher))


def test_retirement_asks_qconf_only_now_and_then(tmp_path):
    launcher = tmp_path / "jsv"
    launcher.write_text("")
    now = [0.0]
    urls = [str(launcher)]
    r = jsvmod.Retirement(str(launcher), url=lambda: urls[0], clock=lambda: now[0])
    assert not r.unwanted()
    urls[0] = "NONE"
    assert not r.unwanted()  # not asked again before URL_CHECK seconds
    now[0] += r.URL_CHECK
    assert r.unwanted()
    urls[0] = None            # qconf could not tell: stay
    now[0] += r.URL_CHECK
    assert not r.unwanted()
    launcher.unlink()
    assert r.unwanted()       # a gone launcher needs no qconf
    assert not jsvmod.Retirement(None).unwanted()  # client JSVs never retire


def _jsv_proc(config, launcher):
    return subprocess.Popen([sys.executable, "-m", "sge.cli", "--config", config, "jsv",
                             "--launcher", str(launcher)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def test_jsv_exits_while_idle_once_its_launcher_is_gone(config, tmp_path):
    launcher = tmp_path / "jsv"
    launcher.write_text("#!/bin/sh\n")
    p = _jsv_proc(config, launcher)
    try:
        data = "\n".join(job({"l_hard": "image=demo"})) + "\n"
        p.stdin.write(data.encode())
        p.stdin.flush()
        assert p.stdout.readline() == b"SEND ENV\n"
        launcher.unlink()  # uninstall; qmaster keeps the pipe open
        p.wait(timeout=60)  # well within a few idle checks
        assert p.returncode == 0
        out = p.stdout.read().decode().splitlines()
        assert out[-1].startswith("RESULT STATE CORRECT")  # the job in hand was answered
        assert p.stderr.read() == b""
    finally:
        p.kill()
        p.wait()


def test_jsv_with_its_launcher_keeps_serving(config, tmp_path):
    launcher = tmp_path / "jsv"
    launcher.write_text("#!/bin/sh\n")
    p = _jsv_proc(config, launcher)
    try:
        # longer than an idle check: still there, still answering
        time.sleep(jsvmod.Retirement.IDLE_CHECK * 2)
        assert p.poll() is None
        p.stdin.write(("\n".join(job({"l_hard": "image=demo"})) + "\nQUIT\n").encode())
        p.stdin.close()
        out = p.stdout.read().decode().splitlines()
        assert p.wait(timeout=30) == 0
        assert out[-1].startswith("RESULT STATE CORRECT")
    finally:
        p.kill()
        p.wait()


def test_an_image_larger_than_every_cache_is_rejected(make_config, tmp_path):
    cfg = make_config(images={"huge": {"url": f"file://{tmp_path}/h.sif", "sha256": DIGEST,
                                       "size": 3 << 30}},
                      cache={"max_size": "2G"}, name="small-cache.yaml")
    [line] = one(cfg, {"l_hard": "image=huge"})
    assert line == ("RESULT STATE REJECT sge-image: image 'huge' is 3.0 GiB, larger than the "
                    "image cache of every host (2.0 GiB); ask your administrator to raise "
                    "cache.max_size")

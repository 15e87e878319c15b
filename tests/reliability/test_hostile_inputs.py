"""Hostile image names and catalog entries, through every entry point that takes them.

A corpus of >= 200 `-l image=` values (traversal, absolute paths, NUL, newlines, shell
metacharacters, 10 kB, unicode look-alikes, names colliding after the complex-name
mapping) and hostile catalog entries: the JSV rejects each with one clear line, the
prolog refuses (100: the job's fault, never the queue's), the CLI and the starter
refuse, the catalog loader names file and line, and no file appears anywhere.
"""
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from sge import config
from sge.errors import ConfigError
from sge.names import is_valid_name, warm_complex
from tests.reliability.conftest import SEED, run_prolog, tree, write_config
from tests.reliability.corpus import MARK, hostile_entries, hostile_values
from tests.support.common import ROOT, sha256
from tests.test_jsv import JsvProcess, job

DIGEST = sha256(b"demo image")
REASONS = ("invalid", "not in the catalog", "longer than", "must not be empty", "one image")


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "cache"
    cfg = write_config(tmp_path / "config.yaml", root,
                       {"demo": {"url": f"file://{tmp_path}/demo.sif", "sha256": DIGEST}})
    config.load(cfg)  # the snapshot, written once before the "nothing created" baseline
    return cfg, str(root)


def _nothing_created(tmp_path, before, root):
    """No file anywhere a hostile name could have steered a write to."""
    after = tree(str(tmp_path))
    new = sorted(after - before)
    allowed = {"sge-image.log"}
    assert [p for p in new if p not in allowed and not p.startswith(".")] == [], new
    assert not os.path.exists(root), "the cache root was created by a rejected request"
    hits = [p for p in after if MARK in p]
    for pattern in (f"/{MARK}*", f"/tmp/*{MARK}*", f"/etc/*{MARK}*", f"{ROOT}/*{MARK}*",
                    f"{os.getcwd()}/*{MARK}*", os.path.expanduser(f"~/*{MARK}*")):
        hits += glob.glob(pattern)
    assert hits == [], hits


def _expect_jsv(route, value):
    """The image a Grid Engine request carries: qmaster splits -l at commas."""
    if route == "env":
        names = [value]
    else:
        names = [e.partition("=")[2] for e in f"image={value}".split(",")
                 if e.partition("=")[0].strip().lower() in ("image", "img")]
    return set(names) == {"demo"}


def test_jsv_rejects_every_hostile_value(site, tmp_path, rng):
    cfg, root = site
    values = hostile_values(rng)
    assert len(values) >= 200
    before = tree(str(tmp_path))
    p = JsvProcess(cfg)
    sent = 0
    try:
        for v in values:
            if "\n" in v or "\0" in v:
                continue  # qmaster's lines end at a newline, its C strings at NUL
            for route in ("l_hard", "l_soft", "env"):
                lines = (job(env={"SGE_IMAGE": v}) if route == "env"
                         else job({route: f"image={v}"}))
                answer = p.job(lines)
                sent += 1
                result = answer[-1]
                assert "%" not in result, result  # printf-safe for qmaster
                if route == "env" and v == "":
                    assert answer[-2:] == ["ENV DEL SGE_IMAGE", "RESULT STATE CORRECT sge-image: "
                                           "removed the empty SGE_IMAGE"], answer
                    continue
                if _expect_jsv(route, v):
                    assert result.startswith("RESULT STATE CORRECT"), (SEED, route, v, answer)
                    continue
                assert result.startswith("RESULT STATE REJECT "), (SEED, route, v, answer)
                assert any(r in result for r in REASONS), (SEED, route, v, result)
                assert len(answer) <= 2 and all(a.startswith(("RESULT", "LOG")) for a in answer)
    finally:
        p.close()  # asserts a clean exit and an empty stderr
    assert sent >= 3 * 190
    _nothing_created(tmp_path, before, root)


def test_prolog_cli_and_starter_refuse_every_hostile_name(site, tmp_path, rng):
    cfg, root = site
    values = hostile_values(rng)
    before = tree(str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "tests.reliability.corpus_driver", cfg],
                       input=json.dumps(values), capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads(p.stdout)
    assert len(results) == len(values) >= 200
    for r in results:
        name = r["name"]
        if r["prolog"] is not None:  # None: NUL or empty, which no job environment carries
            code, out = r["prolog"]
            assert code == 100 and "the job cannot run" in out, (SEED, name, r["prolog"])
            assert len(out.strip().splitlines()) == 1, out
            code, out = r["starter"]
            assert code == 75 and "cannot run the job in image" in out, (SEED, name, out)
        for cmd in ("pull", "path"):
            code, out = r[cmd]
            assert code == 3, (SEED, cmd, name, r[cmd])
            assert len(out.strip().splitlines()) == 1, out
    # A sample through the real entry, in a process of its own each.
    for name in rng.sample([v for v in values if "\0" not in v and v], 8):
        code, out = run_prolog(cfg, name)
        assert code == 100, (SEED, name, code, out)
    _nothing_created(tmp_path, before, root)


def test_catalog_loader_reports_hostile_names(tmp_path, rng):
    values = [v for v in hostile_values(rng) if _dumpable(v)]
    before = tree(str(tmp_path))
    root = str(tmp_path / "cache")
    rejected = 0
    for i, v in enumerate(values):
        d = tmp_path / f"c{i}"
        d.mkdir()
        (d / "images.yaml").write_text(yaml.safe_dump(
            {"other": {"url": "file:///x", "sha256": DIGEST},
             v: {"url": "file:///x", "sha256": DIGEST}}, allow_unicode=True))
        cfg = write_config(d / "config.yaml", root, None, catalog="images.yaml")
        _drop_images_key(cfg)
        acceptable = is_valid_name(v) and warm_complex(v) not in ("img_cache_free",
                                                                  "img_sensor_time")
        try:
            settings = config.load(cfg, use_snapshot=False)
        except ConfigError as e:
            msg = str(e)
            assert not acceptable, (SEED, v, msg)
            assert msg.startswith(f"{d}/images.yaml:"), msg
            assert int(msg.split(":")[1]) >= 1, msg  # a line number
            assert "\n" not in msg, msg
            rejected += 1
        else:
            assert acceptable, (SEED, v, "loaded")
            assert set(settings.images) == {"other", v}
    assert rejected >= 180
    new = tree(str(tmp_path)) - before
    assert not [p for p in new if not p.startswith("c")], new
    assert not os.path.exists(root)


def test_catalog_loader_reports_hostile_entries(tmp_path):
    url = "http://127.0.0.1:9/demo.sif"
    for i, (label, images) in enumerate(hostile_entries(DIGEST, url)):
        d = tmp_path / f"e{i}"
        d.mkdir()
        (d / "images.yaml").write_text(yaml.safe_dump(images, allow_unicode=True))
        cfg = write_config(d / "config.yaml", str(tmp_path / "cache"), None, catalog="images.yaml")
        _drop_images_key(cfg)
        with pytest.raises(ConfigError) as e:
            config.load(cfg, use_snapshot=False)
        msg = str(e.value)
        assert msg.startswith(f"{d}/images.yaml:"), (label, msg)
        line = int(msg.split(":")[1])
        assert line >= 1, (label, msg)
    # A duplicate name in YAML (the second would silently win in a plain loader).
    d = tmp_path / "dup"
    d.mkdir()
    (d / "images.yaml").write_text(f"demo:\n  url: {url}\n  sha256: {DIGEST}\n"
                                   f"demo:\n  url: {url}\n  sha256: {DIGEST}\n")
    cfg = write_config(d / "config.yaml", str(tmp_path / "cache"), None, catalog="images.yaml")
    _drop_images_key(cfg)
    with pytest.raises(ConfigError, match=r"images\.yaml:4: duplicate key 'demo'"):
        config.load(cfg, use_snapshot=False)
    assert not os.path.exists(tmp_path / "cache")


def test_reserved_complexes_are_the_sensors_own():
    """The names the catalog refuses are exactly the complexes the kit defines."""
    from sge.ge import install, loadsensor
    from sge.names import RESERVED_COMPLEXES
    assert {loadsensor.FREE_COMPLEX, loadsensor.TIME_COMPLEX} <= set(RESERVED_COMPLEXES)
    fixed = [name for name in install.kit_complexes(_empty_settings())
             if name.startswith("img_")]
    assert sorted(fixed) == sorted(RESERVED_COMPLEXES)


def _empty_settings():
    return config.Settings({"sensor": {"list_complex": True}}, {})


def _dumpable(v):
    try:
        yaml.safe_dump({v: 1}, allow_unicode=True)
        return True
    except yaml.YAMLError:
        return False


def _drop_images_key(cfg):
    with open(cfg) as f:
        data = yaml.safe_load(f)
    data.pop("images", None)
    with open(cfg, "w") as f:
        yaml.safe_dump(data, f)

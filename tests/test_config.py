"""Config and catalog validation: every error names file, line and cause."""
import os

import pytest

from sge import config
from sge.errors import ConfigError, UnknownImage

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def write(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def load_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(path, use_snapshot=False)
    return str(e.value), path


def test_example_config_loads(tmp_path):
    path = write(tmp_path, f"""
cache:
  root: /var/cache/sge-image
  max_size: 200G
  low_water: 80%
images:
  rocky9-cuda:
    url: https://images.example.org/rocky9-cuda.sif
    sha256: {DIGEST}
    size: 4831838208
  mirrored:
    url: [http://a.example/x.sif, file:///srv/x.sif]
    sha256: sha256:{DIGEST.upper()}
""")
    s = config.load(path, use_snapshot=False)
    assert s.cache.max_size == 200 << 30
    assert s.cache.low_water == 0.8
    img = s.image("rocky9-cuda")
    assert img.size == 4831838208 and img.sha256 == DIGEST and img.complex == "img_rocky9-cuda"
    assert s.image("mirrored").urls == ["http://a.example/x.sif", "file:///srv/x.sif"]
    assert s.image("mirrored").sha256 == DIGEST


@pytest.mark.parametrize("text, line, words", [
    ("cache:\n  root: /x\n  max_sise: 1G\n", 3, "unknown key cache.max_sise"),
    ("cache:\n  root: relative/dir\n", 2, "absolute path"),
    ("cache:\n  max_size: lots\n", 2, "not a size"),
    ("cache:\n  low_water: 180%\n", 2, "between 0% and 100%"),
    ("fetch:\n  retries: -1\n", 2, "non-negative"),
    ("colour: blue\n", 1, "unknown key 'colour'"),
    ("images:\n  ok:\n    url: file:///x\n    sha256: " + DIGEST + "\n    sizee: 3\n", 5, "unknown key 'sizee'"),
    ("images:\n  ../etc:\n    url: file:///x\n    sha256: " + DIGEST + "\n", 2, "invalid"),
    ("images:\n  nodigest:\n    url: http://a/x.sif\n", 2, "neither a sha256"),
    ("images:\n  short:\n    url: http://a/x.sif\n    sha256: abc\n", 4, "64 hex"),
    ("images:\n  nourl:\n    sha256: " + DIGEST + "\n", 2, "'url' must be"),
    ("images:\n  a:\n    url: x\n    sha256: " + DIGEST + "\n  A:\n    url: y\n    sha256: " + DIGEST + "\n",
     5, "only in case"),
    ("cache:\n  root: /a\ncache:\n  root: /b\n", 3, "duplicate key 'cache'"),
    ("cache: [1, 2\n", 2, "malformed YAML"),
    ("images:\n  big:\n    url: file:///x\n    sha256: " + DIGEST + "\n    size: -4\n", 5, "negative"),
])
def test_errors_name_file_line_and_cause(tmp_path, text, line, words):
    msg, path = load_error(tmp_path, text)
    assert msg.startswith(f"{path}:{line}:"), msg
    assert words in msg


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*--config"):
        config.load(str(tmp_path / "absent.yaml"), use_snapshot=False)


def test_catalog_file_errors_name_the_catalog(tmp_path):
    write(tmp_path, "demo:\n  url: file:///x\n  sha256: zz\n", "images.yaml")
    path = write(tmp_path, "catalog: images.yaml\n")
    with pytest.raises(ConfigError) as e:
        config.load(path, use_snapshot=False)
    assert str(e.value).startswith(str(tmp_path / "images.yaml") + ":3:")


def test_oras_digest_pin_needs_no_sha256(tmp_path):
    path = write(tmp_path, "images:\n  p:\n    url: oras://r.example/x@sha256:" + DIGEST + "\n")
    img = config.load(path, use_snapshot=False).image("p")
    assert img.sha256 is None and img.pin == DIGEST


def test_unknown_and_invalid_names_are_clear(tmp_path):
    s = config.load(write(tmp_path, ""), use_snapshot=False)
    with pytest.raises(UnknownImage, match="not in the catalog.*status --catalog"):
        s.image("nope")
    for bad in ["", "../x", "a b", "x" * 65, "a;rm -rf /", "ünï", "a\nb"]:
        with pytest.raises(UnknownImage):
            s.image(bad)


def test_snapshot_is_used_then_refreshed_on_change(tmp_path):
    path = write(tmp_path, f"images:\n  a:\n    url: file:///x\n    sha256: {DIGEST}\n")
    assert set(config.load(path).images) == {"a"}
    snap = tmp_path / ".config.yaml.snapshot.json"
    assert snap.exists()
    # The snapshot answers while the YAML is unchanged ...
    snap_text = snap.read_text().replace('"a"', '"b"')
    snap.write_text(snap_text)
    os.chmod(snap, 0o644)
    assert set(config.load(path).images) == {"b"}
    # ... and is ignored once the YAML changes.
    write(tmp_path, f"images:\n  c:\n    url: file:///x\n    sha256: {DIGEST}\n")
    assert set(config.load(path).images) == {"c"}


def test_world_writable_snapshot_is_ignored(tmp_path):
    path = write(tmp_path, f"images:\n  a:\n    url: file:///x\n    sha256: {DIGEST}\n")
    config.load(path)
    snap = tmp_path / ".config.yaml.snapshot.json"
    snap.write_text(snap.read_text().replace('"a"', '"evil"'))
    os.chmod(snap, 0o666)
    assert set(config.load(path).images) == {"a"}


def test_host_placeholder_in_cache_root(tmp_path):
    import socket
    path = write(tmp_path, "cache:\n  root: /var/cache/sge-image/{host}\n")
    s = config.load(path, use_snapshot=False)
    assert s.cache_root == "/var/cache/sge-image/" + socket.gethostname().split(".")[0]


def test_a_misspelt_image_gets_the_nearest_catalog_name(make_config):
    from sge import config
    from sge.errors import UnknownImage
    cfg = make_config({"rocky9-cuda": {"url": "/x", "sha256": "ab" * 32}})
    s = config.load(cfg)
    for typo in ("rocky9-cdua", "Rocky9-CUDA", "rocky9-cud"):
        with pytest.raises(UnknownImage) as e:
            s.image(typo)
        assert "(did you mean 'rocky9-cuda'?)" in str(e.value)
    with pytest.raises(UnknownImage) as e:
        s.image("ubuntu")
    assert "did you mean" not in str(e.value)


def test_a_sha256_yaml_read_as_a_number_says_quote_it(tmp_path):
    from sge import config
    from sge.errors import ConfigError
    p = tmp_path / "c.yaml"
    p.write_text("images:\n  x:\n    url: /x\n    sha256: " + "1" * 64 + "\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(p), use_snapshot=False)
    assert f"{p}:4:" in str(e.value) and "read as a number; quote it" in str(e.value)


def test_an_unclosed_quote_names_the_line_it_began_on(tmp_path):
    from sge import config
    from sge.errors import ConfigError
    p = tmp_path / "c.yaml"
    p.write_text('images:\n  x:\n    url: "/x\n    sha256: abc\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(p), use_snapshot=False)
    assert "malformed YAML" in str(e.value) and "at line 3" in str(e.value)


def test_config_may_follow_the_subcommand(make_config):
    import subprocess
    import sys

    from tests.support.common import ROOT
    cfg = make_config({"rocky9-cuda": {"url": "/x", "sha256": "ab" * 32}})
    for argv in (["--config", cfg, "catalog", "check"], ["catalog", "check", "--config", cfg]):
        r = subprocess.run([sys.executable, "-m", "sge.cli", *argv], capture_output=True,
                           text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0 and r.stdout.strip().endswith("1 image, ok"), r.stderr


def test_sections_are_typed_read_only_and_default_from_the_schema(tmp_path):
    s = config.load(write(tmp_path, "fetch:\n  retries: 7\nstarter:\n  runtime: apptainer run\n"),
                    use_snapshot=False)
    assert s.fetch.retries == 7
    assert s.fetch.read_timeout == config.SCHEMA["fetch"]["read_timeout"][1]
    assert s.starter.runtime == ("apptainer", "run")
    with pytest.raises(AttributeError, match="read-only"):
        s.fetch.retries = 0
    with pytest.raises(AttributeError):
        s.fetch.colour = "blue"
    # every SCHEMA section has its class, and its class every key with a type
    assert [sec.NAME for sec in config.SECTIONS] == list(config.SCHEMA)
    for sec in config.SECTIONS:
        assert set(sec.__slots__) == set(sec.__annotations__) == set(config.SCHEMA[sec.NAME])
        assert getattr(s, sec.NAME).as_dict().keys() == config.SCHEMA[sec.NAME].keys()


def test_sections_survive_the_snapshot(tmp_path):
    path = write(tmp_path, "agent:\n  trust: [10.1.0.0/16, node1]\ncache:\n  root: /c/{host}\n")
    fresh = config.load(path)
    again = config.load(path)
    assert again.stamps and again.to_json() == fresh.to_json()
    assert again.agent.trust == ("10.1.0.0/16", "node1")
    assert again.cache.root == "/c/{host}"


def test_settings_and_catalog_import_no_source_module(tmp_path):
    """Loading the settings (YAML or snapshot) must not import a fetcher: the s3 one
    brings botocore, and the prolog's warm path loads the settings on every job."""
    import subprocess
    import sys
    path = write(tmp_path, f"images:\n  a:\n    url: s3://b/k\n    sha256: {DIGEST}\n"
                           f"    s3: {{region: eu-west-1}}\n")
    code = ("import sys; from sge import config; config.load(sys.argv[1]); "
            "print(' '.join(m for m in sys.modules if m.startswith(('sge.fetch', 'boto'))))")

    def loaded():
        return subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                              text=True, check=True).stdout.split()
    # the YAML: the catalog's s3 options are checked by the s3 module, without botocore
    assert not [m for m in loaded() if m.startswith("boto")]
    assert loaded() == []  # the snapshot

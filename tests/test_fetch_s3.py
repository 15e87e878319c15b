"""s3:// against a real S3 service (rclone serve s3 on 127.0.0.1): credentials from
files, profiles and the environment, S3's own error codes, digests, dead servers."""
import os
import time

import pytest

from sge.errors import FetchError
from tests.support.common import cli, payload, sha256
from tests.support.servers_oci_s3 import S3_KEY_ID, S3_SECRET, S3Server, run_fetch

MB = 1 << 20


@pytest.fixture(autouse=True)
def aws_env(tmp_path, monkeypatch):
    """Only the credentials a test sets up. The metadata service is switched off:
    without it botocore would probe the instance-role address for credentials."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(str(tmp_path_factory.mktemp("s3")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def obj(s3):
    data = payload(3 * MB, seed=31)
    digest = s3.put("images", "lab/tool.sif", data)
    return data, digest


def opts_for(s3, tmp_path, **extra):
    creds = s3.credentials_file(str(tmp_path / "credentials"))
    return {"s3": {"endpoint_url": s3.endpoint, "credentials_file": creds, **extra}}


def test_fetch_with_a_credentials_file(tmp_path, s3, obj):
    data, digest = obj
    got_digest, got, log = run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=digest,
                                     size=len(data), options=opts_for(s3, tmp_path))
    assert got == data and got_digest == digest


def test_fetch_with_a_named_profile_and_site_defaults(tmp_path, s3, obj):
    """Site-wide `sources.s3` gives the endpoint; the image picks a profile."""
    data, digest = obj
    creds = str(tmp_path / "credentials")
    s3.credentials_file(creds, key_id="AKIDWRONGWRONGWRONG1", secret="nope")
    s3.credentials_file(creds, profile="lab")
    sources = {"s3": {"endpoint_url": s3.endpoint, "credentials_file": creds}}
    _, got, _ = run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=digest,
                          options={"s3": {"profile": "lab"}}, sources=sources)
    assert got == data


def test_fetch_with_environment_credentials(tmp_path, s3, obj, monkeypatch):
    data, digest = obj
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    _, got, _ = run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=digest,
                          options={"s3": {"endpoint_url": s3.endpoint, "region": "eu-west-1",
                                          "addressing_style": "path"}})
    assert got == data


def test_multipart_object_is_checked_by_sha256_not_etag(tmp_path, s3):
    """Uploaded in 5 MiB parts through the S3 API; only the catalog's sha256 decides."""
    from boto3.s3.transfer import TransferConfig
    data = payload(12 * MB, seed=32)
    src = tmp_path / "upload.sif"
    src.write_bytes(data)
    client = s3.client()
    client.create_bucket(Bucket="multi")
    client.upload_file(str(src), "multi", "tool.sif",
                       Config=TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB))
    etag = client.head_object(Bucket="multi", Key="tool.sif")["ETag"].strip('"')
    assert etag != sha256(data)
    digest, got, _ = run_fetch(tmp_path, "s3://multi/tool.sif", sha256=sha256(data),
                               options=opts_for(s3, tmp_path))
    assert got == data


def test_pull_end_to_end(s3, obj, make_config, tmp_path):
    data, digest = obj
    creds = s3.credentials_file(str(tmp_path / "credentials"))
    cfg = make_config({"tool": {"url": "s3://images/lab/tool.sif", "sha256": digest,
                                "s3": {"credentials_file": creds}}},
                      sources={"s3": {"endpoint_url": s3.endpoint}})
    env = {**os.environ}
    r = cli(cfg, "pull", "tool", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    with open(r.stdout.strip(), "rb") as f:
        assert f.read() == data


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("url,code", [("s3://images/lab/absent.sif", "NoSuchKey"),
                                      ("s3://no-such-bucket/tool.sif", "NoSuchBucket")])
def test_missing_object_or_bucket(tmp_path, s3, obj, url, code):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, url, sha256="1" * 64, options=opts_for(s3, tmp_path), name="tool")
    msg = str(e.value)
    assert not e.value.transient
    assert msg.startswith("image 'tool': every source failed") and url in msg and code in msg
    assert "X-Amz-Signature" not in msg and "X-Amz-Credential" not in msg


@pytest.mark.parametrize("key_id,secret,code", [
    ("AKIDUNKNOWNUNKNOWN01", S3_SECRET, "InvalidAccessKeyId"),
    (S3_KEY_ID, "wrong-secret", "SignatureDoesNotMatch")])
def test_wrong_credentials(tmp_path, s3, obj, key_id, secret, code):
    creds = s3.credentials_file(str(tmp_path / "bad"), key_id=key_id, secret=secret)
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1],
                  options={"s3": {"endpoint_url": s3.endpoint, "credentials_file": creds}})
    assert not e.value.transient
    assert code in str(e.value) and "access denied" in str(e.value)


def test_no_credentials_anywhere(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1],
                  options={"s3": {"endpoint_url": s3.endpoint}})
    assert not e.value.transient and "no AWS credentials found" in str(e.value)


def test_anonymous_request_to_a_private_bucket(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1],
                  options={"s3": {"endpoint_url": s3.endpoint, "anonymous": True}})
    assert not e.value.transient and "access denied" in str(e.value)


def test_unknown_profile(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1],
                  options=opts_for(s3, tmp_path, profile="nosuchprofile"))
    assert not e.value.transient and "nosuchprofile" in str(e.value)


def test_wrong_digest(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256="2" * 64,
                  options=opts_for(s3, tmp_path))
    assert not e.value.transient and "does not match the catalog" in str(e.value)


def test_wrong_size_is_caught_before_the_body(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1], size=len(obj[0]) + 1,
                  options=opts_for(s3, tmp_path))
    assert not e.value.transient and "server offers" in str(e.value)


@pytest.mark.parametrize("url", ["s3://bucket-only", "s3:///key", "s3://bad bucket/key"])
def test_bad_urls(tmp_path, url):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, url, sha256="1" * 64)
    assert not e.value.transient and "expected s3://BUCKET/KEY" in str(e.value)


def test_bad_site_wide_option_is_named(tmp_path, s3, obj):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/lab/tool.sif", sha256=obj[1],
                  sources={"s3": {"endpoint": s3.endpoint}})
    assert not e.value.transient and "config sources.s3.endpoint: unknown option" in str(e.value)


def test_catalog_options_are_checked_at_load(make_config):
    from sge import config
    from sge.errors import ConfigError
    cfg = make_config({"tool": {"url": "s3://b/k", "sha256": "1" * 64,
                                "s3": {"region": "x", "enpoint_url": "http://127.0.0.1:1"}}})
    with pytest.raises(ConfigError) as e:
        config.load(cfg, use_snapshot=False)
    assert "s3.enpoint_url: unknown option" in str(e.value)
    assert str(e.value).startswith(f"{cfg}:")
    line = int(str(e.value).split(":")[1])
    assert "enpoint_url" in open(cfg).read().splitlines()[line - 1]


# ---------------------------------------------------------------- dead servers

@pytest.fixture
def slow_s3(tmp_path):
    """A server throttled to 4 MiB/s, so a test can kill it mid-body."""
    server = S3Server(str(tmp_path / "slow"), bwlimit="4M")
    yield server
    server.stop()


def killer(server, at, then=None):
    state = {"done": False}

    def progress(received, total):
        if not state["done"] and received >= at:
            state["done"] = True
            server.kill()
            if then:
                then()
    return progress


def test_server_down_is_transient(tmp_path, slow_s3):
    digest = slow_s3.put("images", "tool.sif", payload(MB, seed=33))
    slow_s3.kill()
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "s3://images/tool.sif", sha256=digest,
                  options=opts_for(slow_s3, tmp_path))
    assert e.value.transient and "connection refused" in str(e.value)
    assert "X-Amz-Signature" not in str(e.value)


def test_server_killed_mid_stream_then_retried(tmp_path, slow_s3):
    data = payload(6 * MB, seed=34)
    digest = slow_s3.put("images", "tool.sif", data)
    restarted = []

    def sleep(delay):
        slow_s3.start()
        restarted.append(delay)
    got_digest, got, log = run_fetch(tmp_path, "s3://images/tool.sif", sha256=digest,
                                     options=opts_for(slow_s3, tmp_path), retries=1,
                                     progress=killer(slow_s3, MB), sleep=sleep)
    assert got == data and restarted
    assert any("retrying" in line for line in log)
    assert not any("X-Amz-Signature" in line for line in log)


def test_expired_presigned_url_is_renewed_when_resuming(tmp_path, slow_s3, monkeypatch):
    """URLs valid for one second; the server is killed mid-body and back two seconds
    later: the resume is refused as expired, a new URL is signed, the body finishes."""
    from sge.fetch import s3 as s3mod
    monkeypatch.setattr(s3mod, "PRESIGN_SECONDS", 1)
    data = payload(6 * MB, seed=35)
    digest = slow_s3.put("images", "tool.sif", data)

    def back_later():
        time.sleep(2)
        slow_s3.start()
    got_digest, got, log = run_fetch(tmp_path, "s3://images/tool.sif", sha256=digest,
                                     options=opts_for(slow_s3, tmp_path),
                                     progress=killer(slow_s3, MB, then=back_later))
    assert got == data
    assert any("renewed the credentials" in line for line in log), log

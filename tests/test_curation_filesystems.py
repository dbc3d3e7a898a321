"""Curation on a second file system: raw shards and outputs on S3 (Beam's own S3FileSystem
against an S3 server on 127.0.0.1, moto's, started by the test), compared byte for byte with
a run on local paths. Workers read and write through Beam's FileSystems, so this is what a
``gs://`` or ``s3://`` user gets."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest
from PIL import Image

from curation.config import load_config
from curation.curate import curate
from tests.conftest import free_port

pytestmark = pytest.mark.slow
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "corpus"
RULES = ["text.rare_tokens_enabled=false", "language.enabled=false", "image.max_texts_per_image=2"]


def _raw_shards() -> dict[str, bytes]:
    """Three small raw shards whose samples meet several rules (sizes, shared image, repeated key)."""
    def jpeg(colour, size):
        buffer = io.BytesIO()
        Image.new("RGB", size, colour).save(buffer, "JPEG")
        return buffer.getvalue()

    shared = jpeg((10, 200, 10), (320, 240))
    shards = {}
    for s in range(3):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(6):
                key = f"{s}{i:03d}" if not (s == 2 and i == 0) else "0001"  # repeats a key of shard 0
                image = shared if i == 5 else jpeg((40 * i, 20 * s, 200), (300, 260) if i != 3 else (120, 260))
                for ext, data in (("jpg", image), ("txt", f"a picture number {s} {i} here".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards[f"{s:05d}.tar"] = buffer.getvalue()
    return shards


@pytest.fixture
def s3_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "S3 server did not start"
                time.sleep(0.2)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _objects(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"][len(prefix):]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return out


def test_curation_on_s3_matches_the_local_run(s3_server, tmp_path, monkeypatch):
    endpoint, client, env = s3_server
    # the local runner starts its worker processes without the pipeline options: they find the
    # S3 endpoint and keys in the environment, as boto3 does (a cluster worker gets the options)
    for name, value in {**env, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    shards = _raw_shards()
    (tmp_path / "raw").mkdir()
    for name, data in shards.items():
        (tmp_path / "raw" / name).write_bytes(data)
        client.put_object(Bucket=BUCKET, Key=f"raw/{name}", Body=data)
    config = load_config("align", RULES)
    local = curate(tmp_path / "raw", tmp_path / "out", config, workers=2)
    s3_args = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=test", "--s3_secret_access_key=test",
               "--s3_region_name=us-east-1"]
    remote = curate(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/out", load_config("align", RULES), workers=2,
                    beam_args=s3_args)

    # the rules did work: a too-small image, the repeated key, an image over its text limit
    assert remote["rejected"] == local["rejected"] and {"too_small", "duplicate_key", "image_too_many_texts"} <= set(
        local["rejected"])
    assert remote["inputs"] == local["inputs"] == 18 and remote["kept"] == local["kept"]
    written = _objects(client, "out/")
    assert "corpus.json" in written and not any(k.startswith("_work/") for k in written)  # facts removed
    for folder in ("shards", "rejected", "_counts"):
        local_files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out" / folder).iterdir()}
        remote_files = {k.split("/", 1)[1]: hashlib.sha256(v).hexdigest() for k, v in written.items()
                        if k.startswith(folder + "/")}
        assert remote_files == local_files, folder   # the same bytes on either file system
    assert remote["shards"] == local["shards"]
    # a second run replaces the output prefix: nothing of the first is left behind
    client.put_object(Bucket=BUCKET, Key="out/shards/stale.tar", Body=b"old")
    curate(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/out", load_config("align", RULES), workers=2, beam_args=s3_args)
    assert "shards/stale.tar" not in _objects(client, "out/")

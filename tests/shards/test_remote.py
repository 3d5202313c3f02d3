"""Shard sets anywhere: HTTP (http.server on 127.0.0.1), S3 (moto's server on 127.0.0.1, s3fs as client),
``pipe:`` commands and brace patterns, read with the same checks as local files; remote outputs upload
each shard when complete and the manifest last.

The S3 tests need the ``s3`` extra (``pip install -e '.[s3]'``) and skip with the reason otherwise.
"""

from __future__ import annotations

import functools
import http.server
import shlex
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthkit.cli import main
from synthkit.config import DataConfig
from synthkit.data.convert import convert_source
from synthkit.data.inspect import inspect_shard_set
from synthkit.errors import ShardError
from synthkit.shards import iter_samples, read_manifest, verify_shard_set
from synthkit.shards.mix import MixedShardStream, parse_mix_spec
from synthkit.shards.output import open_output


def _keys_and_pixels(samples: Any) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["image"].tobytes()) for s in samples]


@pytest.fixture
def served(tmp_path: Path):
    """A directory served over HTTP on 127.0.0.1 for the test, then shut down."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_set_pattern_and_pipe_read_as_the_local_set(served, write_set):
    root, base = served
    local = write_set(str(root / "set"), maxcount=2)  # 5 samples in 3 shards
    want = _keys_and_pixels(iter_samples(local))
    url = f"{base}/set"
    assert _keys_and_pixels(iter_samples(url)) == want
    # A brace pattern is checked against the manifest beside it (sizes, hashes) as a set is.
    assert _keys_and_pixels(iter_samples(f"{url}/hard-{{000000..000002}}.tar")) == want
    # pipe: streams are bare tars (nothing vouches for them); the samples are the same.
    pipes = [f"pipe:cat {shlex.quote(str(p))}" for p in sorted(local.glob("*.tar"))]
    assert _keys_and_pixels(iter_samples(pipes)) == want
    report = verify_shard_set(url)
    assert report.ok and (report.total, report.shards) == (5, 3), report.problems
    assert inspect_shard_set(url)["total"] == 5
    assert read_manifest(url)["total"] == 5


def test_urls_are_never_mangled_into_paths(served, write_set):
    _, base = served
    spec = parse_mix_spec(f"real={base}/set:0.5")
    assert spec.path == f"{base}/set" and spec.weight == 0.5  # Path() would have made it "http:/127..."
    write_set(str(served[0] / "set"), maxcount=2, items=None)
    stream = MixedShardStream([spec], seed=0, epoch_samples=5)
    assert sorted(s["__key__"] for s in stream) == [f"s{i:03d}" for i in range(5)]


def test_remote_failures_are_one_line_shard_errors(served, write_set, tmp_path, monkeypatch):
    import synthkit.shards.location as location

    monkeypatch.setattr(location, "_policy", location.RemotePolicy(attempts=2, backoff_s=0.01))
    _, base = served
    with pytest.raises(ShardError, match="no manifest"):
        list(iter_samples(f"{base}/nothing-here"))
    with pytest.raises(ShardError, match=r"exited with status 3 \(gave up after 2 attempts"):
        list(iter_samples(["pipe:exit 3"]))
    with pytest.raises(ShardError, match=r"status 127 \(not found or not executable\) \(1 attempt in"):
        list(iter_samples(["pipe:no-such-command-here"]))
    with pytest.raises(ShardError, match="can be read but not written"):
        open_output(f"{base}/out")
    local = write_set(str(served[0] / "set"), maxcount=2)
    (local / "hard-000001.tar").write_bytes(b"x" * 10)  # replaced on the server
    with pytest.raises(ShardError, match=r"hard-000001\.tar: 10 bytes, the manifest says"):
        list(iter_samples(f"{base}/set"))


def test_cli_takes_urls(served, write_set, capsys):
    _, base = served
    write_set(str(served[0] / "set"), maxcount=2)
    assert main(["shards", "verify", f"{base}/set"]) == 0
    assert "OK (5 samples in 3 shards)" in capsys.readouterr().out
    assert main(["shards", "inspect", f"{base}/set", "--json"]) == 0
    assert '"total": 5' in capsys.readouterr().out


# --------------------------------------------------------------------------- S3 (moto server, s3fs client)


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the local S3 server; fsspec's s3:// URLs reach it through the environment."""
    import boto3
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_url,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"b{np.random.default_rng().integers(1 << 30)}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=bucket)
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()


def test_convert_to_s3_uploads_shards_then_the_manifest_last(s3, tmp_path, monkeypatch):
    import synthkit.shards.output as output_module

    url = f"s3://{s3}/digits-real"
    order: list[str] = []
    seen_before_manifest: list[Any] = []
    real_publish = output_module.RemoteOutput.publish

    def publish(self, name: str) -> None:
        if name == "manifest.json":  # everything else is up; a reader must still see no set
            seen_before_manifest.append(read_manifest(url))
            with pytest.raises(ShardError, match="no manifest"):
                list(iter_samples(url))
        real_publish(self, name)
        order.append(name)

    monkeypatch.setattr(output_module.RemoteOutput, "publish", publish)
    cfg = DataConfig(name="digits", size=8, subset=40)
    manifest = convert_source(cfg, "train", url, maxcount=16)
    local = convert_source(cfg, "train", tmp_path / "local", maxcount=16)
    assert manifest == {**local, "created_by": manifest["created_by"]}
    tables = [t["name"] for t in manifest["metadata_tables"]["tables"]]
    assert order == [s["name"] for s in manifest["shards"]] + ["sizes.json", *tables, "manifest.json"]
    assert seen_before_manifest == [None]
    assert verify_shard_set(url).ok
    assert _keys_and_pixels(iter_samples(url)) == _keys_and_pixels(iter_samples(tmp_path / "local"))
    with pytest.raises(ShardError, match="already holds a published shard set"):
        convert_source(cfg, "train", url, maxcount=16)


@pytest.mark.slow
def test_train_streams_real_and_synthetic_shards_from_s3(s3, trained_run, tiny_pipeline, tmp_path, capsys):
    """``generate --out s3://`` and ``shards convert --out s3://``, then ``train --data NAME=s3://...``."""
    real, syn = f"s3://{s3}/real", f"s3://{s3}/syn"
    assert (
        main(
            [
                "shards",
                "convert",
                "--data",
                "digits",
                "--size",
                "16",
                "--subset",
                "256",
                "--out",
                real,
                "--maxcount",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--run",
                str(trained_run),
                "--out",
                syn,
                "--n",
                "96",
                "--seed",
                "0",
                "--maxcount",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert verify_shard_set(syn).ok and read_manifest(syn)["total"] == 96
    capsys.readouterr()
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(tiny_pipeline),
            "--out",
            str(run),
            "--no-progress",
            "--data",
            f"real={real}:0.5",
            "--data",
            f"syn={syn}:0.5",
            "--hsg.enabled=false",
            "--mix.epoch_samples=256",
            "--train.epochs=1",
            "--train.knn_every=0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (run / "final" / "encoder.safetensors").exists()


def test_writer_refuses_a_url_as_a_local_directory(tmp_path, monkeypatch):
    from synthkit.shards import ShardSetWriter

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is a URL"):
        ShardSetWriter("s3://bucket/set", "hard", manifest_fields={})
    assert not (tmp_path / "s3:").exists()  # no local directory named after the mangled URL


def test_a_stalled_server_is_an_error_not_a_hang(monkeypatch):
    """A server that accepts and never answers: the read fails after the read timeout, on each attempt."""
    import socket

    import synthkit.shards.location as location

    monkeypatch.setattr(
        location, "_policy", location.RemotePolicy(attempts=2, read_timeout_s=1, backoff_s=0.1)
    )
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    box: dict[str, BaseException] = {}

    def read() -> None:
        try:
            list(iter_samples(f"http://127.0.0.1:{listener.getsockname()[1]}/set"))
        except BaseException as exc:  # noqa: BLE001 - carried to the test thread
            box["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    for conn in accepted:
        conn.close()
    listener.close()
    assert not reader.is_alive(), "hung on a stalled server"
    assert isinstance(box.get("error"), ShardError) and "\n" not in str(box["error"]), box
    assert "stalled: no response within 1 s (gave up after 2 attempts" in str(box["error"]), box

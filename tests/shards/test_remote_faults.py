"""Remote shards through a misbehaving server (``tests/faultserver.py`` on 127.0.0.1): transient faults are
retried and resumed, permanent ones are not, every failure is one line naming the URL, the fault and the
attempts, nothing hangs past its timeout, and no unverified byte reaches a sample. Consumers: ``shards
verify``, the reader, ``pipe:`` streams, ``synthkit train --data URL``, ``synthkit audit URL`` and remote
export (uploads to moto's S3 server through a proxy that fails PUTs).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthkit.cli import main
from synthkit.config import ConfigError, DataConfig, RemoteConfig
from synthkit.data.convert import convert_source
from synthkit.errors import ShardError
from synthkit.shards import iter_samples, read_manifest, verify_shard_set
from synthkit.shards import location as loc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultserver import FaultServer, Rule  # noqa: E402

# Small numbers, so that a stall costs a second: read_timeout_s also bounds every hang below.
FAST = {
    "attempts": 3,
    "connect_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "min_bytes_per_s": 2048,
    "backoff_s": 0.05,
    "backoff_max_s": 0.2,
}
FAST_FLAGS = [f"--remote.{k}={v}" for k, v in FAST.items()]
SHARD = "-train-000001.tar"  # the shard the faults hit (the second of 8)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> loc.RemotePolicy:
    """The FAST policy for this test (also in the environment, restored afterwards)."""
    for name, value in FAST.items():
        monkeypatch.setenv(f"SYNTHKIT_REMOTE_{name.upper()}", str(value))
    policy = loc.RemotePolicy(**FAST)
    monkeypatch.setattr(loc, "_policy", policy)
    return policy


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A served root holding ``set``: 128 digits at 16 px in 8 shards of 16."""
    root = tmp_path_factory.mktemp("www")
    convert_source(DataConfig(name="digits", size=16, subset=128), "train", root / "set", maxcount=16)
    return root


def _samples(location: Any) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["image"].tobytes()) for s in iter_samples(location)]


def _gets(server: FaultServer, path: str = SHARD) -> list[tuple]:
    return server.requests("GET", path)


# --------------------------------------------------------------------------- transient: retried, resumed


@pytest.mark.parametrize(
    ("fault", "ranges", "resumes"),
    [
        ("drop", True, True),  # reset mid-body: the retry asks for the rest
        (
            "drop",
            False,
            True,
        ),  # ... of a server without ranges: it sends the whole file, the first half dropped
        ("short", True, True),  # a clean close before the announced length
        ("truncate", True, True),  # a Content-Length of half the file (a wrong length)
        ("stall", True, True),  # half the body, then nothing
        ("silent", True, False),  # no response at all
        ("trickle", True, True),  # far below remote.min_bytes_per_s
        ("status:503", True, False),
        ("status:500", True, False),
    ],
)
def test_a_transient_fault_is_retried_and_the_samples_are_the_local_ones(fast, www, fault, ranges, resumes):
    want = _samples(www / "set")
    with FaultServer(www, [Rule(fault, path=SHARD, times=1)], ranges=ranges, trickle_bps=200) as server:
        started = time.monotonic()
        report = verify_shard_set(f"{server.url}/set")
        took = time.monotonic() - started
        assert report.ok and report.total == 128, report.problems
        first, retry = _gets(server)
        assert first[3] == fault and retry[3] is None
        # the retry asks for the rest (Range: bytes=N-) where the first try got N bytes, else reads again
        assert (retry[2] is not None and retry[2] != "bytes=0-") == resumes, retry
        assert took < 1.0 + 2 * FAST["read_timeout_s"] + 2, took  # one timeout at most, no hang
        assert _samples(f"{server.url}/set") == want  # the reader, after the fault is spent


def test_a_fault_on_the_manifest_is_retried_too(fast, www):
    with FaultServer(www, [Rule("drop", path="manifest.json", times=2)]) as server:
        assert _samples(f"{server.url}/set") == _samples(www / "set")
        assert [r[3] for r in server.requests("GET", "manifest.json")][:3] == ["drop", "drop", None]


# --------------------------------------------------------------------------- permanent: not retried


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("status:404", "missing (HTTP 404"),
        ("status:403", "access denied (HTTP 403 Forbidden)"),
        ("status:400", "HTTP 400 Bad Request"),
        ("corrupt", "does not match the manifest's"),  # a hash mismatch: none of its samples is used
    ],
)
def test_a_permanent_fault_is_one_line_and_not_retried(fast, www, fault, says):
    with FaultServer(www, [Rule(fault, path=SHARD)]) as server:
        url = f"{server.url}/set"
        report = verify_shard_set(url)
        assert not report.ok and any(says in p and SHARD in p for p in report.problems), report.problems
        assert len(_gets(server)) == 1
        with pytest.raises(ShardError) as info:
            list(iter_samples(url))
        message = str(info.value)
        assert "\n" not in message and f"{url}/digits-" in message and SHARD in message, message
        assert says in message, message
        if fault != "corrupt":
            assert "1 attempt in" in message and "permanent, not retried" in message, message
        assert len(_gets(server)) == 2  # one more read, one more request


def test_samples_of_a_shard_before_its_hash_fails_are_never_given_out(fast, www):
    """The corrupt shard is the second: the reader gives out the first shard's 16 samples and then refuses,
    never one of the corrupt shard's (the hash is checked before its samples are decoded)."""
    with FaultServer(www, [Rule("corrupt", path=SHARD)]) as server:
        got: list[str] = []
        with pytest.raises(ShardError, match="sha256"):
            for sample in iter_samples(f"{server.url}/set"):
                got.append(sample["__shard__"])
        assert len(got) == 16 and all(SHARD not in shard for shard in got)


@pytest.mark.parametrize("fault", ["status:503", "stall", "drop"])
def test_a_fault_that_stays_gives_up_after_the_attempts_in_bounded_time(fast, www, fault):
    with FaultServer(www, [Rule(fault, path=SHARD)]) as server:
        started = time.monotonic()
        with pytest.raises(ShardError) as info:
            list(iter_samples(f"{server.url}/set"))
        took = time.monotonic() - started
        message = str(info.value)
        assert "\n" not in message and "/set/digits-" in message and SHARD in message, message
        assert "gave up after 3 attempts in" in message and "remote.attempts=3" in message, message
        fault_text = {
            "status:503": "HTTP 503",
            "stall": "stalled: no data for 1 s",
            "drop": "connection broke",
        }
        assert fault_text[fault] in message, message
        assert len(_gets(server)) == FAST["attempts"]
        bound = FAST["attempts"] * (FAST["read_timeout_s"] + FAST["backoff_max_s"]) + 3
        assert took < bound, took


def test_shards_verify_command_through_faults(fast, www, capsys):
    """``synthkit shards verify URL``: a transient fault is invisible; one that stays is reported with the
    URL, the fault and the tries (SYNTHKIT_REMOTE_* settings: this command has no pipeline config)."""
    with FaultServer(www, [Rule("stall", path=SHARD, times=1)]) as server:
        assert main(["shards", "verify", f"{server.url}/set"]) == 0
        assert "OK (128 samples in 8 shards)" in capsys.readouterr().out
    with FaultServer(www, [Rule("status:502", path=SHARD)]) as server:
        assert main(["shards", "verify", f"{server.url}/set"]) == 1
        err = capsys.readouterr().err
        assert f"{server.url}/set/digits-" in err and "HTTP 502 Bad Gateway (gave up after 3 attempts" in err


def test_a_file_replaced_between_two_tries_is_not_spliced(fast, www, tmp_path):
    """The first try is dropped halfway; before the retry the file changes. The retry's If-Range no longer
    matches, the server sends the new file whole, and the reader refuses to join the two: one line."""
    import shutil

    root = tmp_path / "www"
    shutil.copytree(www / "set", root / "set")
    shard = next((root / "set").glob(f"*{SHARD}"))
    original = shard.read_bytes()

    def replace(number: int, method: str, path: str) -> None:
        if SHARD in path and len(server.requests("GET", SHARD)) == 2:
            shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))

    with FaultServer(root, [Rule("drop", path=SHARD, times=1)], hook=replace) as server:
        with pytest.raises(ShardError, match="changed at the source while it was read"):
            list(iter_samples(f"{server.url}/set"))
        assert len(_gets(server)) == 2


# --------------------------------------------------------------------------- pipe: commands


def test_a_pipe_command_that_fails_is_run_again(fast, www, tmp_path):
    shard = next((www / "set").glob(f"*{SHARD}"))
    flag = tmp_path / "ran-once"
    # fails the first time after writing part of the shard; then writes it whole
    command = f"pipe:if [ -e {flag} ]; then cat {shard}; else touch {flag}; head -c 5000 {shard}; exit 7; fi"
    assert _samples([command]) == _samples([f"pipe:cat {shard}"])
    assert len(_samples([f"pipe:cat {shard}"])) == 16
    with pytest.raises(ShardError, match=r"exited with status 7 \(gave up after 3 attempts"):
        list(iter_samples([f"pipe:head -c 5000 {shard}; exit 7"]))
    started = time.monotonic()
    with pytest.raises(ShardError, match=r"stalled: the command wrote nothing for 1 s .*gave up after 3"):
        list(iter_samples([f"pipe:head -c 5000 {shard}; sleep 30"]))
    assert time.monotonic() - started < 3 * 1.2 + 2


# --------------------------------------------------------------------------- settings


def test_settings_from_the_config_and_the_environment(monkeypatch):
    assert RemoteConfig() == RemoteConfig(**vars(loc.RemotePolicy()))  # one set of defaults
    with pytest.raises(ConfigError, match="remote.attempts must be an integer >= 1, got 0"):
        RemoteConfig(attempts=0)
    with pytest.raises(ConfigError, match=r"remote.read_timeout_s must be a number > 0"):
        RemoteConfig(read_timeout_s=0)
    monkeypatch.setattr(loc, "_policy", None)
    monkeypatch.setenv("SYNTHKIT_REMOTE_ATTEMPTS", "9")
    monkeypatch.setenv("SYNTHKIT_REMOTE_BACKOFF_S", "0.5")
    assert loc.remote_policy() == loc.RemotePolicy(attempts=9, backoff_s=0.5)
    monkeypatch.setenv("SYNTHKIT_REMOTE_ATTEMPTS", "many")
    with pytest.raises(ShardError, match="SYNTHKIT_REMOTE_ATTEMPTS='many': not a number"):
        loc.remote_policy()
    policy = loc.RemotePolicy(backoff_s=1, backoff_max_s=5)
    waits = [policy.backoff(n) for n in range(1, 6)]
    assert all(0.5 * b <= w <= b for w, b in zip(waits, [1, 2, 4, 5, 5], strict=True)), waits


# --------------------------------------------------------------------------- training and audit


def _final_tensors(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "final" / "encoder.safetensors"))


def _train(tiny_pipeline: Path, run: Path, source: str, *extra: str) -> int:
    args = ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", "--data", f"real={source}:1"]
    args += ["--hsg.enabled=false", "--train.knn_every=0", "--train.epochs=2", *FAST_FLAGS, *extra]
    return main(args)


@pytest.mark.slow
def test_training_through_a_server_that_drops_every_tenth_request_equals_training_from_disk(
    fast, www, tiny_pipeline, tmp_path, capsys
):
    assert _train(tiny_pipeline, tmp_path / "local", str(www / "set")) == 0
    with FaultServer(www, [Rule("drop", every=10)]) as server:
        code = _train(tiny_pipeline, tmp_path / "remote", f"{server.url}/set")
        assert code == 0, capsys.readouterr().err
        dropped = [r for r in server.log if r[3] == "drop"]
        assert len(dropped) >= 2, server.log  # faults were met, and got through
    local, remote = _final_tensors(tmp_path / "local"), _final_tensors(tmp_path / "remote")
    assert local.keys() == remote.keys()
    assert all(np.array_equal(local[k], remote[k]) for k in local)


@pytest.mark.slow
def test_training_with_skip_passes_a_shard_that_stays_broken_with_one_warning(
    fast, www, tiny_pipeline, tmp_path, capsys, recwarn
):
    with FaultServer(www, [Rule("status:503", path=SHARD)]) as server:
        run = tmp_path / "run"
        code = _train(tiny_pipeline, run, f"{server.url}/set", "--mix.on_error=skip")
        err = capsys.readouterr().err
        assert code == 0, err
        assert len(_gets(server)) == 2 * FAST["attempts"]  # read (and given up on) once per epoch
    # the warning is a log line, or (where pytest's own capture got there first) a recorded warning
    about = [line for line in err.splitlines() if SHARD in line]
    about += [str(w.message) for w in recwarn if SHARD in str(w.message)]
    assert len(about) == 1, (err, about)  # one line, in the first epoch; the second epoch counts it, silently
    assert "skipped (on_error='skip')" in about[0], about
    assert "HTTP 503" in about[0] and "gave up after 3 attempts" in about[0], about
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_skipped"] for r in records if "epoch_skipped" in r] == [1, 1]  # one pass per epoch


@pytest.mark.slow
def test_audit_of_remote_shards_through_faults_equals_the_local_audit(fast, www, tmp_path, capsys):
    base = ["--real", "digits", "--extractor", "pixels", "--no-progress", "--json"]
    assert main(["audit", str(www / "set"), "--out", str(tmp_path / "local"), *base]) == 0
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    rules = [Rule("drop", every=4), Rule("status:503", path=SHARD, times=1)]
    with FaultServer(www, rules) as server:
        assert main(["audit", f"{server.url}/set", "--out", str(tmp_path / "remote"), *base]) == 0
        assert [r for r in server.log if r[3] is not None], "no fault was met"
    remote = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert remote["metrics"] == local["metrics"]


# --------------------------------------------------------------------------- uploads (moto S3 + proxy)


@pytest.fixture
def s3_through(moto_url: str, monkeypatch: pytest.MonkeyPatch, fast):
    """``(connect(rules) -> FaultServer, bucket)``: s3:// URLs reach moto through a fault proxy."""
    import boto3
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"b{np.random.default_rng().integers(1 << 30)}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=bucket)
    servers: list[FaultServer] = []

    def connect(rules: list[Rule]) -> FaultServer:
        server = FaultServer(upstream=moto_url, rules=rules).__enter__()
        servers.append(server)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        s3fs.S3FileSystem.clear_instance_cache()
        return server

    yield connect, bucket
    for server in servers:
        server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_export_upload_survives_failed_puts(s3_through, tmp_path):
    connect, bucket = s3_through
    rules = [
        Rule("status:500", method="PUT", path="-000000.tar", times=2),
        Rule("drop", method="PUT", path="-000003.tar", times=1),
        Rule("status:503", method="PUT", path="manifest.json", times=1),
    ]
    server = connect(rules)
    url = f"s3://{bucket}/set"
    cfg = DataConfig(name="digits", size=16, subset=128)
    manifest = convert_source(cfg, "train", url, maxcount=16)
    assert [r[3] for r in server.requests("PUT", "-000000.tar")] == ["status:500", "status:500", None]
    assert [r[3] for r in server.requests("PUT", "-000003.tar")] == ["drop", None]
    assert [r[3] for r in server.requests("PUT", "manifest.json")] == ["status:503", None]
    assert verify_shard_set(url).ok
    local = convert_source(cfg, "train", tmp_path / "local", maxcount=16)
    assert manifest["shards"] == local["shards"]  # the same bytes landed
    assert _samples(url) == _samples(tmp_path / "local")


def test_a_permanent_upload_fault_is_one_line_and_publishes_nothing(s3_through):
    connect, bucket = s3_through
    server = connect([Rule("status:403", method="PUT", path="-000002.tar")])
    url = f"s3://{bucket}/set"
    with pytest.raises(ShardError) as info:
        convert_source(DataConfig(name="digits", size=16, subset=128), "train", url, maxcount=16)
    message = str(info.value)
    assert "\n" not in message and re.search(r"cannot upload \S+-000002\.tar to s3://", message), message
    assert "access denied" in message and "permanent, not retried" in message, message
    assert message.endswith("the set was not published"), message
    assert len(server.requests("PUT", "-000002.tar")) == 1
    assert not server.requests("PUT", "manifest.json")
    assert read_manifest(url) is None


def test_an_upload_that_keeps_failing_gives_up_after_the_attempts(s3_through):
    connect, bucket = s3_through
    server = connect([Rule("status:500", method="PUT", path="-000001.tar")])
    with pytest.raises(ShardError, match=r"cannot upload .*-000001\.tar .*gave up after 3 attempts"):
        convert_source(
            DataConfig(name="digits", size=16, subset=128), "train", f"s3://{bucket}/set", maxcount=16
        )
    assert len(server.requests("PUT", "-000001.tar")) == 3
    assert read_manifest(f"s3://{bucket}/set") is None


def test_an_upload_that_is_never_answered_times_out_on_each_try(s3_through):
    """s3fs retries timeouts itself (5 tries) unless told not to: the tries are remote.attempts, no more."""
    connect, bucket = s3_through
    server = connect([Rule("silent", method="PUT", path="-000001.tar")])
    started = time.monotonic()
    with pytest.raises(ShardError, match=r"-000001\.tar .*Read timeout.*gave up after 3 attempts"):
        convert_source(
            DataConfig(name="digits", size=16, subset=128), "train", f"s3://{bucket}/set", maxcount=16
        )
    assert len(server.requests("PUT", "-000001.tar")) == FAST["attempts"]
    assert (
        time.monotonic() - started < FAST["attempts"] * (FAST["read_timeout_s"] + FAST["backoff_max_s"]) + 10
    )


def test_resume_may_change_the_remote_settings_only(tmp_path):
    """Retry settings do not change what a run computes: ``--resume`` takes new ones; other keys still not."""
    from synthkit.config import load_pipeline, save_pipeline
    from synthkit.errors import RunError
    from synthkit.training.run_dir import check_run_dir

    tiny = Path(__file__).resolve().parents[2] / "pipelines" / "tiny.yaml"
    save_pipeline(load_pipeline(tiny), tmp_path / "config.yaml")
    check_run_dir(load_pipeline(tiny, ["--remote.attempts=10", "--remote.read_timeout_s=5"]), tmp_path, True)
    with pytest.raises(RunError, match=r"train.lr"):
        check_run_dir(load_pipeline(tiny, ["--remote.attempts=10", "--train.lr=0.5"]), tmp_path, True)

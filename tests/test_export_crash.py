"""An export killed at any point claims nothing it did not finish, and rerunning it resumes to the same bytes.

The kill test runs ``synthkit generate`` as a real subprocess and SIGKILLs it at several moments (a random
one, right after a shard appears, mid-shard, several shards in), checking after each kill that there is no
manifest and that every shard present is listed in the writer's journal with its true SHA-256. Disk-full and
permission errors are injected in-process during a resumed export.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from synthkit.cli import main
from synthkit.export import IN_PROGRESS, generate
from synthkit.shards import ShardError, iter_samples, sha256_file
from synthkit.shards.writer import journal_name

NAME = "synthkit"  # named explicitly: the default name is the export's own (tests/shards/test_other_tools.py)
JOURNAL = journal_name(NAME)
# 50 shards of 24 from chunks of 16 (the tiny run's export.batch_size): shard ends fall inside chunks, so a
# resume must recompute a chunk whose first samples are already durable. The tiny run exports ~400 samples/s
# here, so the set takes a few seconds: long enough to be killed several times before it is complete.
GEN_ARGS = ["--n", "1200", "--maxcount", "24", "--seed", "7", "--no-progress", "--name", NAME]


def _cmd(run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "synthkit.cli", "generate", "--run", str(run), "--out", str(out), *GEN_ARGS]


def _env() -> dict[str, str]:
    # the same thread count in every process, so that every attempt computes the same floats
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _tars(out: Path) -> list[Path]:
    return sorted(out.glob("*.tar")) if out.is_dir() else []


def _assert_nothing_claims_completeness(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    tars = _tars(out)
    journal = out / JOURNAL
    listed = {e["name"]: e for e in json.loads(journal.read_text())["shards"]} if journal.exists() else {}
    for tar in tars:
        assert tar.name in listed, f"{tar.name} is not in the journal"
        assert tar.stat().st_size == listed[tar.name]["bytes"]
        assert sha256_file(tar) == listed[tar.name]["sha256"], f"{tar.name} differs from its journal entry"
    if out.is_dir():
        with pytest.raises(ShardError, match="no manifest"):
            next(iter_samples(out))


def _kill_when(cmd: list[str], ready: Callable[[], bool], delay: float = 0.0, timeout: float = 120.0) -> None:
    """Start ``cmd``, wait until ``ready()`` and then ``delay`` seconds, and SIGKILL it."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the export ended before the kill point: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was never reached")
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"


def _new_shard(out: Path, more: int = 1) -> Callable[[], bool]:
    before = len(_tars(out))
    return lambda: len(_tars(out)) >= before + more


def _files(out: Path) -> dict[str, bytes]:
    """Every file of the set, the metadata tables under metadata/ included."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_sigkill_at_any_point_then_rerun_is_byte_identical(trained_run: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    done = subprocess.run(_cmd(trained_run, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    rng = random.Random(20240607)
    kills: list[tuple[str, Callable[[], Callable[[], bool]], float]] = [
        ("at a random early moment", lambda: (out / IN_PROGRESS).exists, rng.uniform(0.0, 0.3)),
        ("right after a shard appears", lambda: _new_shard(out), 0.0),
        ("at a random moment a few shards on", lambda: _new_shard(out, 4), rng.uniform(0.0, 0.05)),
    ]
    for what, ready, delay in kills:
        _kill_when(_cmd(trained_run, out), ready(), delay)
        try:
            _assert_nothing_claims_completeness(out)
        except AssertionError as exc:
            raise AssertionError(f"after a kill {what}: {exc}") from exc
    assert len(_tars(out)) >= 5, "the kills should have left several completed shards to resume from"

    resumed = subprocess.run(_cmd(trained_run, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ShardResumeWarning" not in resumed.stderr  # a kill never damages a shard the journal vouches for
    # the summary (hardness mean, min, max) includes the samples read back from the kept shards
    assert resumed.stdout.split(";")[1] == done.stdout.split(";")[1]
    assert _files(out) == _files(ref)  # shards, sizes.json, manifest.json, preview.png; no journal or temp


def _fail_os_write(monkeypatch: pytest.MonkeyPatch, victim: Path, code: int) -> None:
    """Make the writer's low-level ``os.write`` fail for the temp file of ``victim`` only."""
    real_write = os.write
    temp = victim.with_name(f".{victim.name}.tmp")

    def write(fd: int, data: bytes) -> int:
        if temp.exists() and os.path.samestat(os.fstat(fd), os.stat(temp)):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def _generate(run: Path, out: Path):
    return generate(run, out, n=80, seed=3, maxcount=16, name=NAME, progress=False)


def test_disk_full_during_a_resumed_export_publishes_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_dir, out = tmp_path / "ref", tmp_path / "s"
    ref = _generate(trained_run, ref_dir)
    # the first try, a resume, and a resume whose samples are all durable and that only has to publish
    for victim, kept in (("synthkit-000002.tar", 2), ("synthkit-000004.tar", 4), ("manifest.json", 5)):
        _fail_os_write(monkeypatch, out / victim, errno.ENOSPC)
        with pytest.raises(ShardError, match=rf"{victim}: disk full \(ENOSPC\).*not published"):
            _generate(trained_run, out)
        monkeypatch.undo()
        _assert_nothing_claims_completeness(out)
        assert [p.name for p in _tars(out)] == [f"{NAME}-{i:06d}.tar" for i in range(kept)]
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    res = _generate(trained_run, out)
    assert res.resumed_from == 80 and not res.reused
    assert _files(out) == _files(ref_dir)
    np.testing.assert_array_equal(res.hardness, ref.hardness)
    np.testing.assert_array_equal(res.conditions, ref.conditions)


def test_permission_error_names_the_file_and_publishes_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # root ignores file modes, so the refusal is injected where the writer publishes a shard
    ref_dir, out = tmp_path / "ref", tmp_path / "s"
    _generate(trained_run, ref_dir)
    _fail_os_write(monkeypatch, out / "synthkit-000001.tar", errno.ENOSPC)
    with pytest.raises(ShardError):
        _generate(trained_run, out)
    monkeypatch.undo()
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "synthkit-000003.tar":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    argv = [
        "generate",
        "--run",
        str(trained_run),
        "--out",
        str(out),
        "--n",
        "80",
        "--seed",
        "3",
        "--name",
        NAME,
    ]
    code = main([*argv, "--maxcount", "16", "--no-progress"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2
    assert f"cannot write {out / 'synthkit-000003.tar'}: Permission denied (EACCES)" in err
    assert "not published" in err
    _assert_nothing_claims_completeness(out)
    assert [p.name for p in _tars(out)] == [f"{NAME}-{i:06d}.tar" for i in range(3)]
    assert _generate(trained_run, out).resumed_from == 48
    assert _files(out) == _files(ref_dir)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory modes")
def test_read_only_out_dir_names_the_file(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "s"
    _fail_os_write(monkeypatch, out / "synthkit-000001.tar", errno.ENOSPC)
    with pytest.raises(ShardError):
        _generate(trained_run, out)
    monkeypatch.undo()
    out.chmod(0o500)
    try:
        with pytest.raises(ShardError, match=rf"{NAME}-000001\.tar: Permission denied.*not published"):
            _generate(trained_run, out)
    finally:
        out.chmod(0o755)
    _assert_nothing_claims_completeness(out)
    assert _generate(trained_run, out).resumed_from == 16

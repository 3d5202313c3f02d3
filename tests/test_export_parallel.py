"""``synthkit generate`` on several processes, or in parts, writes the set one process writes, byte for byte.

Shard boundaries (``export.maxcount``) fall inside chunks (``export.batch_size``) and part boundaries fall
between shards, so a part recomputes the chunk it shares with its neighbour: the bytes show that neither the
chunks nor their hardness depend on who computes them. Every process runs with one thread
(``OMP_NUM_THREADS=1``), as the one-process reference does, so that all compute the same floats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthkit.cli import main
from synthkit.export import generate
from synthkit.shards import ShardError, sha256_file
from synthkit.shards.parts import find_part_journals, publish_parts

NAME = "synthkit"
# 100 samples in shards of 24 from chunks of 16 (the tiny run's export.batch_size): 5 shards
ARGS = {"n": 100, "seed": 3, "maxcount": 24}


def _cli_args(run: Path, out: Path, args: dict[str, int]) -> list[str]:
    flags = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    return ["generate", "--run", str(run), "--out", str(out), "--name", NAME, *flags, "--no-progress"]


def _files(out: Path) -> dict[str, bytes]:
    # recursive: the per-shard metadata tables (metadata/) are part of the set's bytes
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


def _launch(processes: int, run: Path, out: Path, args: dict[str, int]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "synthkit.cli",
        *_cli_args(run, out, args),
    ]


@pytest.fixture
def one_thread():
    """One intra-op thread here too, as in the launched processes: the same floats everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference(trained_run: Path, tmp_path: Path, one_thread) -> Path:
    generate(trained_run, tmp_path / "ref", name=NAME, **ARGS, progress=False)
    return tmp_path / "ref"


@pytest.mark.parametrize("parts", [2, 3])
def test_generate_in_parts_and_publish_gives_the_same_bytes(trained_run, reference, tmp_path, capsys, parts):
    out = tmp_path / "parts"
    for i in reversed(range(parts)):  # in any order, as array jobs finish
        assert main([*_cli_args(trained_run, out, ARGS), "--part", f"{i}/{parts}"]) == 0
        assert f"wrote part {i}/{parts}" in capsys.readouterr().out
    assert not (out / "manifest.json").exists()
    assert main(["shards", "publish", str(out)]) == 0
    assert "verified and published 100 samples in 5 shards" in capsys.readouterr().out
    assert _files(out) == _files(reference)  # shards, sizes.json, manifest.json, preview.png; no journal
    # the same request again, in parts or whole, finds the set finished
    assert main([*_cli_args(trained_run, out, ARGS), "--part", "1/2"]) == 0
    assert main(_cli_args(trained_run, out, ARGS)) == 0
    assert "already holds this exact shard set" in capsys.readouterr().out
    assert _files(out) == _files(reference)


def test_part_requests_that_cannot_work_are_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "parts"
    assert main([*_cli_args(trained_run, out, ARGS), "--part", "0/3"]) == 0
    assert main(["shards", "publish", str(out)]) == 2
    assert "part(s) 1, 2 of 3 never started" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    # another split of the same interrupted export, or a whole-set export over it
    for other in (["--part", "1/2"], []):
        assert main([*_cli_args(trained_run, out, ARGS), *other]) == 2
        assert "split into 3 parts; finish it with 3 processes (or --part I/3)" in capsys.readouterr().err
    for bad in ("3/3", "-1/2"):
        assert main([*_cli_args(trained_run, tmp_path / "x", ARGS), f"--part={bad}"]) == 2
        assert "--part must be I/N with 0 <= I < N" in capsys.readouterr().err
    assert main([*_cli_args(trained_run, tmp_path / "x", ARGS), "--part", "half"]) == 2
    assert "expected I/N" in capsys.readouterr().err
    # a directory with an interrupted one-process export is not a part's to take over
    one = tmp_path / "one"
    (one).mkdir()
    (one / f".{NAME}.journal.json").write_text("{}")
    assert main([*_cli_args(trained_run, one, ARGS), "--part", "0/2"]) == 2
    assert "interrupted export written by one process" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_generate_on_several_processes_is_byte_identical(trained_run, reference, tmp_path, processes):
    out = tmp_path / f"p{processes}"
    done = subprocess.run(
        _launch(processes, trained_run, out, ARGS), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 100 samples in 5 shards") == 1  # the main process reports, once
    assert _files(out) == _files(reference)


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the launched process of ``rank`` (a child of the launcher, with RANK in its environment)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0") if ppid == launcher else []
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_one_process_killed_mid_export_then_rerun_is_byte_identical(trained_run, tmp_path, one_thread):
    args = {"n": 600, "seed": 7, "maxcount": 24}  # 25 shards; process 1 writes shards 12-24
    ref = tmp_path / "ref"
    expected = generate(trained_run, ref, name=NAME, **args, progress=False).hardness
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        _launch(2, trained_run, out, args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not (out / f"{NAME}-000013.tar").exists():  # process 1 is two shards into its part
            assert launcher.poll() is None, launcher.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "process 1 never wrote its shards"
            time.sleep(0.005)
        victim = _worker_pid(launcher.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stderr.close()
    assert launcher.returncode != 0  # the launch failed with its process
    # nothing claims completeness; every shard present is listed in its part's journal with its true hash
    assert not (out / "manifest.json").exists()
    listed = {}
    for _, _, path in find_part_journals(out, NAME)[NAME]:
        listed.update({e["name"]: e for e in json.loads(path.read_text())["shards"]})
    tars = sorted(out.glob("*.tar"))
    assert len(tars) < 25 and {t.name for t in tars} <= set(listed)
    assert all(sha256_file(t) == listed[t.name]["sha256"] for t in tars)
    with pytest.raises(ShardError, match="not complete"):
        publish_parts(out)

    rerun = subprocess.run(
        _launch(2, trained_run, out, args), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed an interrupted export" in rerun.stdout
    summary = f"hardness mean {expected.mean():.4f} (min {expected.min():.4f}, max {expected.max():.4f})"
    assert summary in rerun.stdout  # read back from the shards, kept and new
    assert _files(out) == _files(ref)

"""The life of a run directory: resuming a finished run, checkpoints judged by their structure, a failed run
that leaves nothing behind, one writer at a time, a launch that did not form one group, a disk that fills.

Each case goes through the command line (``synthkit.cli.main``, or a real subprocess where two processes
must run at once) and checks the one line, the exit status, and what is left on disk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from synthkit.cli import main
from synthkit.locks import LOCK_NAME
from synthkit.logs import error_lines
from synthkit.run_files import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "pipelines" / "tiny.yaml")
PLAIN = ("--hsg.enabled=false", "--train.knn_every=0")


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the lock aside), by relative path, with its bytes."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", TINY, "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HSG run of one epoch, finished (final/ published)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_train(run, "--train.epochs=1")) == 0
    return run


def _copy(run: Path, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(run, dst)
    return dst


# ------------------------------------------------------------------------------------------- finished runs
def test_resume_of_a_finished_run_does_nothing_and_keeps_the_users_files(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    kept = run / "final" / "my-shards"
    kept.mkdir()
    (kept / "set-000000.tar").write_bytes(b"the user's own shard set")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train(run, "--train.epochs=1", "--resume")) == 0
    captured = capsys.readouterr()
    out = [line for line in captured.out.splitlines() if line.strip()]
    assert len(out) == 1 and "already finished its train.epochs=1; nothing to do" in out[0], out
    assert not error_lines(captured.err)
    assert _snapshot(run) == before  # nothing deleted, nothing rewritten
    assert not (run / LOCK_NAME).exists()


def test_more_epochs_with_the_users_files_in_final_is_refused(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    (run / "final" / "notes.txt").write_text("mine")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train(run, "--train.epochs=2", "--resume")) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "final/ holds files synthkit did not write (notes.txt)" in err[0], err
    assert _snapshot(run) == before


def test_more_epochs_go_on_from_the_last_state_and_replace_final_whole(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    capsys.readouterr()
    assert main(_train(run, "--train.epochs=2", "--resume")) == 0
    err = capsys.readouterr().err
    assert "resumed from epoch 1 (step 4)" in err
    final = json.loads((run / "final" / "final.json").read_text())
    assert final["epochs"] == 2 and final["steps"] == 8
    ckpt.verify_checkpoint(run / "final")  # whole, and nothing of the old one left beside it
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".", "final"))) == ["final"]
    # the same weights as a run of two epochs from the start
    full = tmp_path / "full"
    assert main(_train(full, "--train.epochs=2")) == 0
    a, b = load_file(full / "final" / "encoder.safetensors"), load_file(run / "final" / "encoder.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_more_epochs_without_the_last_checkpoint_is_one_line_and_changes_nothing(
    finished, tmp_path, capsys
) -> None:
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train(run, "--train.epochs=3", "--resume")) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "newest checkpoint is none (it needs epoch_0001)" in err[0], err
    assert _snapshot(run) == before


def test_opening_a_run_directory_names_what_it_found_and_writes_nothing(finished, tmp_path) -> None:
    """``RunDir.open`` (the main process's part): a new run, a finished one, one to train further, one
    killed before its first checkpoint; it holds the lock after, and a new directory it made goes with the
    lock."""
    from synthkit.config import load_pipeline
    from synthkit.training.run_dir import FINISHED, NEW, RESUME, START_OVER, RunDir

    def opened(path: Path, resume: bool, *overrides: str) -> str:
        directory = RunDir(load_pipeline(finished / "config.yaml", list(overrides)), path, resume)
        found = directory.open()
        assert directory.lock.held and (path / LOCK_NAME).exists()
        directory.lock.release()
        return found

    assert opened(tmp_path / "new", False) == NEW
    assert not (tmp_path / "new").exists()  # made for the lock, and gone with it
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    assert opened(run, True) == FINISHED
    assert opened(run, True, "--train.epochs=2") == RESUME
    assert _snapshot(run) == before
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints")
    assert opened(run, True) == START_OVER
    directory = RunDir(load_pipeline(run / "config.yaml", []), run, True)
    directory.start_over()  # what a run killed before its first checkpoint leaves goes; its config stays
    assert (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "summary.json").exists() and not (run / LOCK_NAME).exists()


# ------------------------------------------------------------------------------ checkpoints by structure
class Payload:
    """Unpickled by a plain ``pickle.load`` or ``torch.load(weights_only=False)``, it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _rechecksum(run: Path) -> Path:
    last = ckpt.checkpoint_dirs(run / "checkpoints")[-1]
    ckpt.write_checksums(last)
    return last


@pytest.fixture(scope="module")
def resumable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HSG run stopped after epoch 1 of 2 (its config says 2), recording indices."""
    run = tmp_path_factory.mktemp("resumable") / "run"
    assert main(_train(run, "--train.epochs=1", "--train.record_indices=true")) == 0
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 1", "epochs: 2"))
    shutil.rmtree(run / "final")  # as if killed before publishing
    return run


def _resume_argv(run: Path) -> list[str]:
    return ["train", str(run / "config.yaml"), "--out", str(run), "--resume", "--no-progress"]


@pytest.mark.parametrize(
    "target", ["optimizer.bin", "model.safetensors", "random_states_0.pkl", "optimizer_1.bin"]
)
def test_a_pickle_payload_with_matching_checksums_is_refused_and_never_run(
    resumable, tmp_path, capsys, target: str
) -> None:
    run = _copy(resumable, tmp_path)
    marker = tmp_path / "payload-ran"
    last = ckpt.checkpoint_dirs(run / "checkpoints")[-1]
    torch.save({"state": Payload(marker), "param_groups": []}, last / target)
    # the payload is live: an unsafe load runs it
    torch.load(io.BytesIO((last / target).read_bytes()), weights_only=False)
    assert marker.exists()
    marker.unlink()
    _rechecksum(run)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_resume_argv(run)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and target in err[0], err
    expected = "is not a safetensors file" if target.endswith(".safetensors") else "posix.system (refused"
    assert expected in err[0], err[0]
    assert not marker.exists()  # never run
    assert _snapshot(run) == before


def _drop_json_key(last: Path) -> None:
    meta = json.loads((last / "loop_state.json").read_text())
    del meta["step"]
    (last / "loop_state.json").write_text(json.dumps(meta))


def _drop_seen(last: Path) -> None:
    save_file({}, str(last / "loop_state.safetensors"))


def _drop_adam_moment(last: Path) -> None:
    state = torch.load(last / "optimizer.bin", weights_only=True)
    for entry in state["state"].values():
        del entry["exp_avg_sq"]
    torch.save(state, last / "optimizer.bin")


def _shrink_generator(last: Path) -> None:
    state = load_file(last / "model_1.safetensors")
    key = next(k for k, v in state.items() if v.dim() > 1)
    state[key] = state[key][:1].clone()
    save_file(state, str(last / "model_1.safetensors"))


def _half_precision_ema(last: Path) -> None:
    state = load_file(last / "producer_generator_ema.safetensors")
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        str(last / "producer_generator_ema.safetensors"),
    )


def _foreign_rng(last: Path) -> None:
    states = torch.load(last / "random_states_0.pkl", weights_only=False)
    states["torch_manual_seed"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(states, last / "random_states_0.pkl")


STRUCTURE = {
    "loop state without step": (_drop_json_key, "loop_state.json holds ['epoch']"),
    "loop state without the seen indices": (
        _drop_seen,
        "loop_state.safetensors does not fit this run: it lacks 'seen'",
    ),
    "optimizer state without a moment": (
        _drop_adam_moment,
        "optimizer.bin: the state of parameter 0 lacks 'exp_avg_sq'",
    ),
    "a generator weight of another shape": (
        _shrink_generator,
        "model_1.safetensors does not fit this run's models",
    ),
    "an EMA in half precision": (_half_precision_ema, "producer_generator_ema.safetensors"),
    "an RNG state torch cannot use": (_foreign_rng, "torch_manual_seed is not a valid state"),
    "a file no checkpoint holds": (
        lambda last: (last / "pytorch_model.bin").write_bytes(b"x"),
        "pytorch_model.bin is not a file of a synthkit checkpoint",
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_a_checkpoint_of_the_wrong_structure_is_one_line_and_changes_nothing(
    resumable, tmp_path, capsys, case: str
) -> None:
    edit, expected = STRUCTURE[case]
    run = _copy(resumable, tmp_path)
    edit(ckpt.checkpoint_dirs(run / "checkpoints")[-1])
    _rechecksum(run)  # the checksums agree: only the structure can tell
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_resume_argv(run)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and expected in err[0], (case, err)
    assert _snapshot(run) == before


def test_the_untouched_checkpoint_resumes_and_says_so(resumable, tmp_path, capsys) -> None:
    run = _copy(resumable, tmp_path)
    capsys.readouterr()
    assert main(_resume_argv(run)) == 0
    assert "resumed from epoch 1 (step 4)" in capsys.readouterr().err
    seen = json.loads((run / "indices.json").read_text())
    assert len(seen["rank0"]) == 8 * 64  # both epochs' indices: the first epoch's came from the checkpoint


# ----------------------------------------------------------------------------------- failures leave nothing
def test_a_new_run_that_fails_after_its_directory_appeared_leaves_nothing(tmp_path, capsys) -> None:
    """The monitor data do not match the run's: refused after the run started setting up; the directory
    it made is gone, and the corrected rerun into the same --out works."""
    from synthkit.config import DataConfig
    from synthkit.data.convert import convert_source

    rgb = tmp_path / "rgb"
    convert_source(DataConfig(name="digits", size=16, channels=3, subset=128), "train", rgb, maxcount=64)
    run = tmp_path / "run"
    capsys.readouterr()
    argv = _train(run, "--data", f"rgb={rgb}:1", "--hsg.enabled=false", "--train.epochs=1")
    assert main(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert not run.exists()
    assert main([*argv, "--train.knn_every=0"]) == 0  # the same --out, fixed


def test_a_tampered_shard_leaves_no_directory_that_blocks_the_rerun(tmp_path, capsys) -> None:
    from synthkit.config import DataConfig
    from synthkit.data.convert import convert_source

    real = tmp_path / "real"
    convert_source(DataConfig(name="digits", size=16, subset=128), "train", real, maxcount=64)
    shard = sorted(real.glob("*.tar"))[0]
    good = shard.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    shard.write_bytes(bytes(bad))
    run = tmp_path / "run"
    argv = _train(run, "--data", f"real={real}:1", *PLAIN, "--train.epochs=1")
    capsys.readouterr()
    assert main(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and shard.name in err[0], err
    assert not run.exists()
    shard.write_bytes(good)
    assert main(argv) == 0  # the same command, once the shard is repaired


def test_resume_of_a_directory_without_a_run_is_refused(tmp_path, capsys) -> None:
    for path, expected in ((tmp_path / "typo", "does not exist"), (tmp_path, "holds no run")):
        assert main(_train(path, "--resume")) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "typo").exists() and not (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------- one writer
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "synthkit.cli", *args]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_second_writer_into_a_run_directory_is_refused_and_the_first_is_unharmed(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(
        _cli(*_train(run, *PLAIN, "--train.epochs=40")),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(run / "metrics.jsonl", first)  # training, with the lock held
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        for argv in (
            _train(run, *PLAIN, "--train.epochs=40"),
            _train(run, *PLAIN, "--train.epochs=40", "--resume"),
        ):
            capsys.readouterr()
            assert main(argv) == 2
            err = error_lines(capsys.readouterr().err)
            assert len(err) == 1 and f"is being written by pid {first.pid}" in err[0], err
            assert first.poll() is None, (
                "the first writer must still be running for this test to mean anything"
            )
        out, err_text = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err_text[-2000:]
    ckpt.verify_checkpoint(run / "final")
    assert json.loads((run / "final" / "final.json").read_text())["epochs"] == 40
    assert not (run / LOCK_NAME).exists()


def test_a_killed_run_leaves_a_stale_lock_that_resume_breaks(tmp_path, capsys) -> None:
    """SIGKILL after the first checkpoint: the lock stays behind, its process gone; --resume breaks it
    and ends with the weights of a run that was never killed."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(*_train(run, *PLAIN, "--train.epochs=30")),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(run / "checkpoints" / "epoch_0002", proc)
    finally:
        proc.kill()
        proc.communicate()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == proc.pid
    newest = ckpt.checkpoint_dirs(run / "checkpoints")[-1]
    epochs = int(newest.name.split("_")[1]) + 1  # plain CL: nothing is scheduled over train.epochs
    capsys.readouterr()
    # the killed run had one thread (ENV); weights are bit-identical only at the same number of threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train(run, *PLAIN, f"--train.epochs={epochs}", "--resume")) == 0
        err = capsys.readouterr().err
        assert f"broke a stale lock of pid {proc.pid}" in err and f"resumed from epoch {epochs - 1}" in err
        full = tmp_path / "full"
        assert main(_train(full, *PLAIN, f"--train.epochs={epochs}")) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(full / "final" / "encoder.safetensors"), load_file(run / "final" / "encoder.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_broken_and_a_lock_from_another_host_is_not(tmp_path, capsys) -> None:
    from synthkit.locks import identity

    run = tmp_path / "run"
    run.mkdir()
    stale = {**identity(), "pid": _dead_pid(), "start_ticks": None}
    (run / LOCK_NAME).write_text(json.dumps(stale))
    assert main(_train(run, "--train.epochs=1", *PLAIN)) == 0
    assert "broke a stale lock" in capsys.readouterr().err
    assert not (run / LOCK_NAME).exists()

    other = tmp_path / "other"
    other.mkdir()
    elsewhere = {**identity(), "host": "another-machine", "pid": 4242}
    (other / LOCK_NAME).write_text(json.dumps(elsewhere))
    assert main(_train(other, "--train.epochs=1", *PLAIN)) == 2
    err = error_lines(capsys.readouterr().err)
    assert (
        len(err) == 1 and "pid 4242 on another-machine" in err[0] and f"delete {other / LOCK_NAME}" in err[0]
    )
    assert sorted(p.name for p in other.iterdir()) == [LOCK_NAME]  # nothing written


def test_a_second_export_into_one_directory_is_refused_and_the_first_is_unharmed(
    finished, tmp_path, capsys
) -> None:
    out = tmp_path / "set"
    argv = [
        "generate",
        "--run",
        str(finished),
        "--out",
        str(out),
        "--n",
        "4000",
        "--maxcount",
        "64",
        "--no-progress",
    ]
    first = subprocess.Popen(_cli(*argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / LOCK_NAME, first)
        capsys.readouterr()
        assert main(argv) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and f"is being written by pid {first.pid}" in err[0], err
        assert first.poll() is None, "the first writer must still be running for this test to mean anything"
        _, err_text = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err_text[-2000:]
    assert main(["shards", "verify", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------ a launch that is no group
def test_a_launch_whose_processes_formed_no_group_is_refused(monkeypatch) -> None:
    """The launcher's environment promises two processes, but this process is alone."""
    from accelerate import Accelerator

    from synthkit.errors import RunError
    from synthkit.training.launch import check_launch

    alone = Accelerator(cpu=True)
    check_launch(alone)  # no launcher: nothing promised
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        RunError, match=r"started 2 processes \(WORLD_SIZE=2\) but they did not join one group"
    ):
        check_launch(alone)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(alone)


def test_a_launch_environment_that_cannot_form_a_group_is_one_line(tmp_path) -> None:
    """WORLD_SIZE without the rest of a launch (no MASTER_ADDR): one line, and nothing written."""
    run = tmp_path / "run"
    env = {k: v for k, v in ENV.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    proc = subprocess.run(_cli(*_train(run, *PLAIN)), env=env, capture_output=True, text=True, timeout=300)
    err = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert "cannot set up the 2 processes the launcher started" in err[0] and "MASTER_ADDR" in err[0]
    assert not run.exists()


@pytest.mark.slow
def test_the_multi_gpu_line_without_gpus_is_refused_by_both_processes(tmp_path) -> None:
    """The README's multi-GPU line on a machine without GPUs (and without ACCELERATE_USE_CPU=1): accelerate
    starts two processes that each think they are alone; both refuse, and nothing is written."""
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs: the launch would form a group")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "synthkit.cli", *_train(run, *PLAIN)]
    env = {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    refusals = [x for x in proc.stderr.splitlines() if "did not join one group" in x]
    assert len(refusals) == 2, proc.stderr[-3000:]
    assert not run.exists()


# ------------------------------------------------------------------------------------ a disk that fills
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1.1 MB tmpfs (room for one tiny checkpoint, not two), grown later. Needs root (mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1100k", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.decode().strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_disk_that_fills_mid_run_then_resume_ends_with_the_uninterrupted_weights(
    small_disk, tmp_path, capsys
) -> None:
    run = small_disk / "run"
    assert main(_train(run)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "disk full" in err[0], err
    kept = ckpt.checkpoint_dirs(run / "checkpoints")
    assert [p.name for p in kept] == ["epoch_0001"] and not (run / "final").exists()
    assert not (run / LOCK_NAME).exists()
    # space is freed (the filesystem grows), and the run goes on
    grown = subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], capture_output=True)
    assert grown.returncode == 0, grown.stderr
    assert main(_train(run, "--resume")) == 0
    assert "resumed from epoch 1 (step 4)" in capsys.readouterr().err
    full = tmp_path / "full"
    assert main(_train(full)) == 0
    for name in ("encoder.safetensors", "generator_ema.safetensors"):
        a, b = load_file(full / "final" / name), load_file(run / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

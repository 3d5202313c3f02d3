"""Every CLI error path we know of prints one line naming the problem, exits 2, and leaves nothing behind.

The table below is the list: each case builds its inputs in ``tmp_path`` (or reads the session's tiny runs)
and gives the argv and a piece of the expected message. Damaged checkpoints and runs, faults during
training (divergence, a full disk) and hostile configs are covered here too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from synthkit.cli import main
from synthkit.logs import error_lines
from synthkit.run_files import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "pipelines" / "tiny.yaml")
Case = Callable[[Path, Path, Path], list[str]]  # (a finished run, a resumable run, tmp_path) -> argv


def _yaml(tmp: Path, text: str | bytes, name: str = "p.yaml") -> str:
    path = tmp / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def _copy_run(run: Path, tmp: Path) -> Path:
    dst = tmp / "run-copy"
    shutil.copytree(run, dst)
    return dst


def _last_checkpoint(run: Path) -> Path:
    return ckpt.checkpoint_dirs(run / "checkpoints")[-1]


def _rewrite_checksums_after(edit: Callable[[Path], None]) -> Callable[[Path, Path], Path]:
    """A copy of the run whose last checkpoint is edited and re-checksummed (so the checksums pass)."""

    def make(run: Path, tmp: Path) -> Path:
        dst = _copy_run(run, tmp)
        last = _last_checkpoint(dst)
        edit(last)
        ckpt.write_checksums(last)
        return dst

    return make


def _resume(make: Callable[[Path, Path], Path]) -> Case:
    """``train --resume`` on a damaged copy of the resumable run."""

    def case(run: Path, resumable: Path, tmp: Path) -> list[str]:
        dst = make(resumable, tmp)
        return ["train", str(dst / "config.yaml"), "--out", str(dst), "--resume", "--no-progress"]

    return case


def _loop_state(value: dict) -> Callable[[Path], None]:
    def edit(last: Path) -> None:
        (last / "loop_state.json").write_text(json.dumps(value))

    return edit


CASES: dict[str, tuple[Case, str]] = {
    # --- configs and pipeline files
    "inf learning rate": (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "--train.lr=.inf"],
        "finite",
    ),
    "inf lambda_hard": (lambda r, res, t: ["config", TINY, "--hsg.lambda_hard=.inf"], "hsg.lambda_hard"),
    "inf weight decay": (lambda r, res, t: ["config", TINY, "--train.weight_decay=.inf"], "weight_decay"),
    "nan temperature": (lambda r, res, t: ["config", TINY, "--objective.temperature=.nan"], "temperature"),
    "inf brightness": (lambda r, res, t: ["config", TINY, "--views.brightness=.inf"], "views.brightness"),
    "empty pipeline file": (lambda r, res, t: ["config", _yaml(t, "")], "is empty"),
    "null section": (lambda r, res, t: ["config", _yaml(t, "train:\n")], "train: is empty"),
    "duplicate section": (lambda r, res, t: ["config", _yaml(t, "train: {}\ntrain: {}\n")], "appears twice"),
    "duplicate key": (
        lambda r, res, t: ["config", _yaml(t, "train:\n  lr: 1\n  lr: 2\n")],
        "'lr' appears twice",
    ),
    "non-UTF-8 file": (lambda r, res, t: ["config", _yaml(t, b"train:\n  lr: \xff\n")], "not UTF-8"),
    "missing pipeline": (lambda r, res, t: ["config", str(t / "nope.yaml")], "does not exist"),
    "unknown key": (lambda r, res, t: ["config", TINY, "--train.nope=1"], "unknown key train.nope"),
    "key of another kind": (
        lambda r, res, t: ["config", TINY, "--generator.pool_size=5"],
        "generator.kind=cgan",
    ),
    "huge data.size": (
        lambda r, res, t: [
            "train",
            TINY,
            "--out",
            str(t / "x"),
            "--data.size=1000000",
            "--hsg.enabled=false",
        ],
        "GiB in memory",
    ),
    "bad override": (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "train.epochs"],
        "section.key=value",
    ),
    # --- --data specs
    "spec without weight": (
        lambda r, res, t: [
            "train",
            TINY,
            "--out",
            str(t / "x"),
            "--data",
            "real=/tmp",
            "--hsg.enabled=false",
        ],
        "NAME=DIR",
    ),
    "spec without name": (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "--data", "=/tmp:1", "--hsg.enabled=false"],
        "source name",
    ),
    "spec bad weight": (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "--data", "a=/tmp:x", "--hsg.enabled=false"],
        "weight",
    ),
    "spec zero weight": (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "--data", "a=/tmp:0", "--hsg.enabled=false"],
        "weight",
    ),
    "spec missing dir": (
        lambda r, res, t: [
            "train",
            TINY,
            "--out",
            str(t / "x"),
            "--data",
            f"a={t / 'none'}:1",
            "--hsg.enabled=false",
        ],
        "not a directory",
    ),
    # --- outputs in the wrong place
    "train --out is a file": (
        lambda r, res, t: ["train", TINY, "--out", _yaml(t, "x", "f.txt")],
        "not a directory",
    ),
    "train --out in /proc": (
        lambda r, res, t: ["train", TINY, "--out", "/proc/synthkit-run"],
        "system directory",
    ),
    "generate --out /dev/null": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", "/dev/null", "--n", "2"],
        "system directory",
    ),
    "generate --out a file": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", _yaml(t, "x", "f.txt"), "--n", "2"],
        "not a directory",
    ),
    "generate --out RUN/final": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(r / "final" / "set"), "--n", "2"],
        "inside the run",
    ),
    "generate --maxcount 0": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--maxcount", "0"],
        "--maxcount must be a positive integer",
    ),
    "generate --n 0": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--n", "0"],
        "--n",
    ),
    "generate --n 10^30": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--n", str(10**30)],
        "GiB free",
    ),
    "generate odd pairs": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--n", "3", "--kind", "pair"],
        "HPG",
    ),
    "generate from no run": (
        lambda r, res, t: ["generate", "--run", str(t), "--out", str(t / "s")],
        "no finished",
    ),
    "audit --out a file": (
        lambda r, res, t: [
            "audit",
            str(t / "set"),
            "--real",
            "digits",
            "--extractor",
            "pixels",
            "--out",
            _yaml(t, "x", "f"),
        ],
        "not a directory",
    ),
    "inspect --grid in /proc": (
        lambda r, res, t: ["shards", "inspect", str(t), "--grid", "/proc/g.png"],
        "system",
    ),
    "train-extractor --epochs 0": (
        lambda r, res, t: [
            "audit",
            "train-extractor",
            "--data",
            "digits",
            "--epochs",
            "0",
            "--out",
            str(t / "c"),
        ],
        "--epochs must be >= 1",
    ),
    "train-extractor --out a file": (
        lambda r, res, t: ["audit", "train-extractor", "--data", "digits", "--out", _yaml(t, "x", "f")],
        "not a directory",
    ),
    "convert --out a file": (
        lambda r, res, t: ["shards", "convert", "--data", "digits", "--out", _yaml(t, "x", "f")],
        "not a directory",
    ),
    # --- damaged checkpoints and runs (resume)
    "checksums {}": (
        _resume(lambda r, t: _edit_run(r, t, lambda last: (last / ckpt.CHECKSUMS).write_text("{}"))),
        "lists no files",
    ),
    "checksums a list": (
        _resume(lambda r, t: _edit_run(r, t, lambda last: (last / ckpt.CHECKSUMS).write_text("[1, 2]"))),
        "lists no files",
    ),
    "checksums entry malformed": (
        _resume(lambda r, t: _edit_run(r, t, lambda last: _malformed_entry(last))),
        "malformed entry",
    ),
    "unlisted file": (
        _resume(lambda r, t: _edit_run(r, t, lambda last: (last / "extra.bin").write_bytes(b"x"))),
        "is not in checksums.json",
    ),
    "loop state epoch 999": (
        _resume(_rewrite_checksums_after(_loop_state({"epoch": 999, "step": 4}))),
        "epoch 999",
    ),
    "loop state wrong type": (
        _resume(_rewrite_checksums_after(_loop_state({"epoch": "two", "step": 4}))),
        "non-negative integers",
    ),
    "loop state missing key": (
        _resume(_rewrite_checksums_after(_loop_state({"epoch": 2}))),
        "loop_state.json",
    ),
    "missing EMA file": (
        _resume(
            _rewrite_checksums_after(lambda last: (last / "producer_generator_ema.safetensors").unlink())
        ),
        "producer_generator_ema.safetensors is missing",
    ),
    "unloadable RNG state": (
        _resume(
            _rewrite_checksums_after(lambda last: (last / "random_states_0.pkl").write_bytes(b"garbage"))
        ),
        "RNG state",
    ),
    "garbled metrics.jsonl": (
        _resume(lambda r, t: _garble_log(r, t)),
        "line 2 is not a metrics record",
    ),
    # --- trackers, names, eval, index (issue 15)
    "unknown tracker": (lambda r, res, t: ["config", TINY, "--train.trackers=[nope]"], "train.trackers"),
    "auto with another tracker": (
        lambda r, res, t: ["config", TINY, "--train.trackers=[auto,mlflow]"],
        "auto stands alone",
    ),
    "a tracker twice": (
        lambda r, res, t: ["config", TINY, "--train.trackers=[tensorboard,tensorboard]"],
        "twice",
    ),
    "generate --name unsafe": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--name", "../up"],
        "--name '../up'",
    ),
    "convert --name hidden": (
        lambda r, res, t: ["shards", "convert", "--data", "digits", "--name", ".x", "--out", str(t / "s")],
        "--name '.x'",
    ),
    "eval --knn-k 0": (lambda r, res, t: ["eval", "--run", str(r), "--knn-k", "0"], "--knn-k must be"),
    "index of no set": (lambda r, res, t: ["shards", "index", str(t)], "no manifest.json"),
    "audit --k 0": (
        lambda r, res, t: ["audit", str(t), "--real", "digits", "--k", "0", "--out", str(t / "c")],
        "audit.k",
    ),
    # --- usage errors (argparse), one line like the rest
    "no command": (lambda r, res, t: [], "required: COMMAND"),
    "unknown command": (lambda r, res, t: ["trian", TINY], "invalid choice: 'trian'"),
    "generate without --run": (
        lambda r, res, t: ["generate", "--out", str(t / "s")],
        "required: --run",
    ),
    "generate --n not a number": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--n", "ten"],
        "invalid int value: 'ten'",
    ),
    "an unknown --kind": (
        lambda r, res, t: ["generate", "--run", str(r), "--out", str(t / "s"), "--kind", "both"],
        "invalid choice: 'both'",
    ),
    "train-extractor without --data": (
        lambda r, res, t: ["audit", "train-extractor", "--out", str(t / "c")],
        "required: --data",
    ),
}
if importlib.util.find_spec("wandb") is None:  # the missing-package error can only show where it is missing
    CASES["tracker not installed"] = (
        lambda r, res, t: ["train", TINY, "--out", str(t / "x"), "--train.trackers=[wandb]"],
        "pip install 'synthkit[wandb]'",
    )


def _edit_run(run: Path, tmp: Path, edit: Callable[[Path], None]) -> Path:
    dst = _copy_run(run, tmp)
    edit(_last_checkpoint(dst))
    return dst


def _malformed_entry(last: Path) -> None:
    sums = json.loads((last / ckpt.CHECKSUMS).read_text())
    key = next(iter(sums))
    sums[key] = {"sha256": 12}
    (last / ckpt.CHECKSUMS).write_text(json.dumps(sums))


def _garble_log(run: Path, tmp: Path) -> Path:
    dst = _copy_run(run, tmp)
    lines = (dst / "metrics.jsonl").read_text().splitlines()
    lines[1] = (
        '{"step": 1, "loss'  # a damaged line in the middle (a cut last line would be a kill's, and dropped)
    )
    (dst / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="module")
def resumable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HSG run of one epoch (of two): its checkpoint can be resumed."""
    run = tmp_path_factory.mktemp("resumable") / "run"
    assert main(["train", TINY, "--out", str(run), "--no-progress", "--train.epochs=1"]) == 0
    # the resume test asks for the config's own epochs: make it two, so there is something left to train
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 1", "epochs: 2"))
    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_path_is_one_line_and_exit_2(
    name: str, trained_run: Path, resumable: Path, tmp_path: Path, capsys
) -> None:
    case, expected = CASES[name]
    argv = case(trained_run, resumable, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(argv)
    err = error_lines(capsys.readouterr().err)
    assert code == 2, (name, err)
    assert len(err) == 1, (name, err)
    assert re.match(r"^synthkit( [a-z-]+)*: error: ", err[0]) and expected in err[0], (name, err[0])
    # nothing half-written: no run, set or report appeared beyond the inputs the case made
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before and p.parts[0] in ("x", "s", "c")]
    assert not new, (name, new)


def test_a_diverging_run_stops_at_its_step_and_publishes_nothing(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["train", TINY, "--out", str(run), "--no-progress", "--train.lr=1e30", "--hsg.enabled=false"])
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "training diverged at step" in err[0], err
    assert not (run / "final").exists()
    # a checkpoint of non-finite weights is never written
    for checkpoint in ckpt.checkpoint_dirs(run / "checkpoints"):
        from synthkit.weights import load_state_dict

        load_state_dict(checkpoint / "model.safetensors")  # raises on non-finite values


def test_eval_and_generate_refuse_non_finite_weights(trained_run: Path, tmp_path: Path, capsys) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    run = _copy_run(trained_run, tmp_path)
    path = run / "final" / "encoder.safetensors"
    state = load_file(path)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path))
    ckpt.write_checksums(run / "final")
    for argv in (["eval", "--run", str(run)], ["generate", "--run", str(run), "--out", str(tmp_path / "s")]):
        assert main(argv) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and "non-finite" in err[0]
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1.1 MB tmpfs: room for one tiny checkpoint, not two. Needs root (mount); skipped otherwise."""
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


def test_disk_full_during_train_is_one_line_and_keeps_the_last_checkpoint(tiny_disk: Path, capsys) -> None:
    run = tiny_disk / "run"
    code = main(["train", TINY, "--out", str(run), "--no-progress"])
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "disk full" in err[0], err
    kept = ckpt.checkpoint_dirs(run / "checkpoints")
    assert [p.name for p in kept] == ["epoch_0001"]
    ckpt.verify_checkpoint(kept[0])  # intact
    assert not (run / "final").exists() and not any(
        p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir()
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only filesystem needs root")
def test_a_read_only_filesystem_is_one_line(tmp_path: Path, capsys) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        for argv in (
            ["train", TINY, "--out", str(mnt / "run")],
            ["shards", "convert", "--data", "digits", "--out", str(mnt / "s")],
            ["audit", "train-extractor", "--data", "digits", "--out", str(mnt / "c")],
        ):
            assert main(argv) == 2
            err = error_lines(capsys.readouterr().err)
            assert len(err) == 1 and "Read-only file system" in err[0], err
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_checkpoint_of_another_encoder_width_is_one_line(resumable: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "wide"
    argv = ["train", TINY, "--out", str(other), "--no-progress", "--train.epochs=1", "--encoder.width=12"]
    assert main(argv) == 0
    run = _copy_run(resumable, tmp_path)
    shutil.rmtree(_last_checkpoint(run))
    shutil.copytree(_last_checkpoint(other), run / "checkpoints" / "epoch_0001")
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume", "--no-progress"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "does not fit this run's models" in err[0], err

"""The joint loop: what a run directory holds, resume equivalence, HSG off as the plain baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthkit.config import load_pipeline, to_dict
from synthkit.run_files import checkpoint as ckpt
from synthkit.training.loop import WALL_CLOCK_KEYS, RunError, train
from tests.conftest import tiny_config


def _records(run: Path, deterministic: bool = False) -> list[dict]:
    """The run's log; ``deterministic`` drops the wall-clock throughput fields (they differ run to run)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if deterministic:
        records = [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in records]
    return records


def test_run_directory_describes_itself(trained_run: Path) -> None:
    cfg = tiny_config()
    assert load_pipeline(trained_run / "config.yaml") == cfg
    run = json.loads((trained_run / "run.json").read_text())
    assert run["seed"] == cfg.train.seed and run["created_by"]["synthkit"]
    final = json.loads((trained_run / "final" / "final.json").read_text())
    assert final["config"] == to_dict(cfg)
    assert set(final["hashes"]) == {"encoder", "generator_ema", "discriminator"}
    assert final["producer"]["kind"] == "cgan"  # the run records its producer
    assert final["producer"]["conditions"] == {"num_classes": 3, "source": "kmeans"}
    ckpt.verify_checkpoint(trained_run / "final")
    # the config is inside every checkpoint's models too: accelerate's state + our loop state
    for c in ckpt.checkpoint_dirs(trained_run / "checkpoints"):
        ckpt.verify_checkpoint(c)
        assert (c / "loop_state.json").is_file()
        assert load_pipeline(c / "config.yaml") == cfg


def test_metrics_log_hsg_schedule_and_monitor(trained_run: Path) -> None:
    recs = _records(trained_run)
    steps = [r for r in recs if "loss_cl" in r]
    epochs = [r for r in recs if "epoch_loss_cl" in r]
    assert len(epochs) == 2 and all("knn_acc" in r for r in epochs)
    assert all(0.0 <= r["knn_acc"] <= 1.0 for r in epochs)
    warm = [r for r in steps if r["epoch"] == 0]
    joint = [r for r in steps if r["epoch"] == 1]
    # warm-up: no synthetic samples reach the encoder and lambda_hard is 0; afterwards both
    assert warm and all(r["lambda_hard"] == 0.0 and "hardness_syn" not in r for r in warm)
    assert joint and all("hardness_syn" in r for r in joint)
    assert joint[-1]["lambda_hard"] > joint[0]["lambda_hard"] >= 0.0


def test_hsg_off_is_plain_simclr(tmp_path: Path) -> None:
    res = train(tiny_config("--hsg.enabled=false", "--train.epochs=1"), tmp_path / "plain", progress=False)
    final = json.loads((tmp_path / "plain" / "final" / "final.json").read_text())
    assert set(final["hashes"]) == {"encoder"}  # no generator was built
    recs = [r for r in _records(tmp_path / "plain") if "loss_cl" in r]
    assert recs and all(set(r) == {"step", "epoch", "loss_cl"} for r in recs)
    assert res.summary["weights_in_sync"]


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(tiny_config(), full, progress=False)
    part = tmp_path / "part"
    train(tiny_config("--train.epochs=1"), part, progress=False)
    train(tiny_config(), part, resume=True, progress=False)
    for name in ("encoder.safetensors", "generator_ema.safetensors", "conditions.safetensors"):
        a, b = load_file(full / "final" / name), load_file(part / "final" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    la = [r for r in _records(full) if "loss_cl" in r]
    lb = [r for r in _records(part) if "loss_cl" in r]
    assert [r["loss_cl"] for r in la] == [r["loss_cl"] for r in lb]


def test_existing_run_needs_resume_and_same_config(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="--resume"):
        train(tiny_config(), trained_run, progress=False)
    with pytest.raises(RunError, match="encoder.width"):
        train(tiny_config("--encoder.width=16"), trained_run, resume=True, progress=False)


def test_resume_before_the_first_checkpoint_starts_the_run_over(tmp_path: Path, caplog, monkeypatch) -> None:
    """A run killed before its first checkpoint: --resume starts it over (and says so), instead of sending
    the user between "no checkpoint" and "pass --resume"."""
    from synthkit.training.checkpoints import Checkpoints

    run = tmp_path / "run"
    real_save = Checkpoints.save

    def killed(self, *a, **k):
        raise KeyboardInterrupt  # the process dies before its first checkpoint is published

    monkeypatch.setattr(Checkpoints, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), run, progress=False)
    monkeypatch.setattr(Checkpoints, "save", real_save)
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").exists()
    with pytest.raises(RunError, match="--resume"):
        train(tiny_config(), run, progress=False)
    with pytest.raises(RunError, match="encoder.width"):  # still the same run's config only
        train(tiny_config("--encoder.width=16"), run, resume=True, progress=False)
    with caplog.at_level("WARNING"):
        res = train(tiny_config(), run, resume=True, progress=False)
    assert "no checkpoint yet: starting the run over" in caplog.text
    full = train(tiny_config(), tmp_path / "full", progress=False)
    assert res.summary["hashes"] == full.summary["hashes"]  # as if it had never been interrupted
    assert _records(run, deterministic=True) == _records(tmp_path / "full", deterministic=True)
    # --resume of a directory that holds no run (a mistyped path) is refused, and creates nothing
    with pytest.raises(RunError, match="does not exist"):
        train(tiny_config("--train.epochs=1"), tmp_path / "nothing", resume=True, progress=False)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="holds no run"):
        train(tiny_config("--train.epochs=1"), tmp_path / "empty", resume=True, progress=False)
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_checksums"])
def test_resume_refuses_damaged_checkpoint(tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    train(tiny_config("--train.epochs=1", "--hsg.enabled=false"), run, progress=False)
    last = ckpt.checkpoint_dirs(run / "checkpoints")[-1]
    target = last / "model.safetensors"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (last / ckpt.CHECKSUMS).unlink()
    expected = {
        "truncate": "model.safetensors is truncated",
        "flip": "model.safetensors is corrupt",
        "delete_checksums": "incomplete",
    }[damage]
    with pytest.raises(ckpt.CheckpointError, match=expected):
        train(tiny_config("--train.epochs=2", "--hsg.enabled=false"), run, resume=True, progress=False)
    # nothing in the run directory was touched by the refused resume
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_saved_config_yaml_is_plain_yaml(trained_run: Path) -> None:
    raw = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert raw["hsg"]["enabled"] is True and raw["data"]["name"] == "digits"


def test_epochs_log_their_throughput_and_the_summary_adds_it_up(trained_run: Path) -> None:
    epochs = [r for r in _records(trained_run) if "epoch_loss_cl" in r]
    summary = json.loads((trained_run / "summary.json").read_text())
    steps, batch = summary["steps"] // len(epochs), tiny_config().train.batch_size
    for r in epochs:
        assert r["epoch_time_s"] > 0
        assert r["epoch_images_per_s"] * r["epoch_time_s"] == pytest.approx(batch * steps)
        assert r["epoch_step_time_s"] * steps == pytest.approx(r["epoch_time_s"])
    t = summary["throughput"]
    assert (t["num_processes"], t["batch_size"], t["epochs"], t["steps"]) == (1, batch, 2, summary["steps"])
    assert t["time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in epochs))
    assert t["images_per_s"] == pytest.approx(batch * t["steps"] / t["time_s"])
    # the trackers get the same figures
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(trained_run / "synthkit")
    )  # accelerate's TensorBoard tracker, project "synthkit"
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("epoch/images_per_s")]
    assert logged == [(r["step"], pytest.approx(r["epoch_images_per_s"], rel=1e-6)) for r in epochs]


def test_sync_batchnorm_on_one_process_is_batch_norm(tmp_path: Path) -> None:
    """One process's batch already is the global batch: the switch changes nothing but the module type, and
    its weights publish under the same names (the export and eval load them into plain batch norm)."""
    hashes = {}
    for flag in ("false", "true"):
        args = (
            "--hsg.enabled=false",
            "--train.epochs=1",
            "--train.knn_every=0",
            f"--train.sync_batchnorm={flag}",
        )
        hashes[flag] = train(tiny_config(*args), tmp_path / flag, progress=False).summary["hashes"]
    assert hashes["true"] == hashes["false"]

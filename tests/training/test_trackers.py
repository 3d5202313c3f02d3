"""``train.trackers``: one run logged to TensorBoard and MLflow at once, each read back by its own API, with
namespaced tags, no ``epoch`` scalar, and a sample grid per epoch; a missing package is a one-line error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from synthkit.cli import main
from synthkit.trackers import mlflow_uri, namespace, tags

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "pipelines" / "tiny.yaml")


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.slow  # MLflow creates its sqlite store (~10 s on this machine)
@pytest.mark.skipif(
    not _have("tensorboard", "mlflow", "sqlalchemy", "alembic"),
    reason="needs tensorboard and mlflow (pip install 'synthkit[test]')",
)
def test_one_run_logged_to_tensorboard_and_mlflow(tmp_path: Path, monkeypatch, capsys) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    argv = ["train", TINY, "--out", str(run), "--no-progress", "--train.trackers=[tensorboard,mlflow]"]
    assert main(argv) == 0
    records = [r for r in map(__import__("json").loads, (run / "metrics.jsonl").read_text().splitlines())]
    epochs = [r for r in records if "epoch_loss_cl" in r]
    assert len(epochs) == 2

    # TensorBoard, read back by its own event reader
    ea = EventAccumulator(str(run / "synthkit"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss_cl", "epoch/loss_cl", "epoch/knn_acc", "epoch/lambda_hard"} <= scalars
    assert all("/" in t for t in scalars), scalars  # every tag namespaced
    assert not {t for t in scalars if t.split("/")[-1] == "epoch"}, scalars  # the counter is the x axis
    tb = ea.Scalars("epoch/loss_cl")
    assert [e.step for e in tb] == [r["step"] for r in epochs]
    assert [e.value for e in tb] == pytest.approx([r["epoch_loss_cl"] for r in epochs], rel=1e-6)  # float32
    assert "samples/grid" in ea.Tags()["images"]  # epoch 2 (after the HSG warm-up) has hard samples
    image = ea.Images("samples/grid")[-1]
    assert image.step == epochs[-1]["step"] and image.width > 0 and image.height > 0

    # MLflow, read back by its own client from the run's own store
    client = MlflowClient(tracking_uri=mlflow_uri(run))
    exp = client.get_experiment_by_name("synthkit")
    (ml_run,) = client.search_runs([exp.experiment_id])
    assert ml_run.info.run_name == "run"
    history = client.get_metric_history(ml_run.info.run_id, "epoch/loss_cl")
    assert [m.step for m in history] == [r["step"] for r in epochs]
    assert [m.value for m in history] == pytest.approx([r["epoch_loss_cl"] for r in epochs])
    assert "epoch" not in ml_run.data.metrics and "train/epoch" not in ml_run.data.metrics
    assert ml_run.data.params["train.lr"] == "0.001"
    grids = [a.path for a in client.list_artifacts(ml_run.info.run_id, "samples/grid")]
    assert grids == ["samples/grid/epoch_0002.png"]


def test_no_tracker_writes_no_tracker_files_and_a_resume_may_add_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", TINY, "--out", str(run), "--no-progress"]
    assert main([*argv, "--train.epochs=1", "--train.trackers=[]"]) == 0
    assert not (run / "synthkit").exists() and not (run / "mlflow.db").exists()
    if not _have("tensorboard"):
        pytest.skip("tensorboard is not installed")
    assert main([*argv, "--resume", "--train.trackers=[tensorboard]"]) == 0  # epoch 2, now to TensorBoard
    assert list((run / "synthkit").glob("events.out.tfevents.*"))


@pytest.mark.skipif(
    _have("wandb"), reason="wandb is installed here, so its missing-package error cannot show"
)
def test_a_tracker_whose_package_is_missing_is_one_line_naming_the_extra(tmp_path: Path, capsys) -> None:
    code = main(["train", TINY, "--out", str(tmp_path / "x"), "--train.trackers=[wandb]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "wandb" in err[0] and "pip install 'synthkit[wandb]'" in err[0]
    assert not (tmp_path / "x").exists()


def test_tags_are_namespaced_and_counters_dropped() -> None:
    assert tags({"epoch": 3, "epoch_loss_cl": 1.0, "knn_acc": 0.5}, "epoch") == {
        "epoch/loss_cl": 1.0,
        "epoch/knn_acc": 0.5,
    }
    rec = {"pretrain_step": 10, "loss_d": 2.0, "loss_g_adv": 1.0}
    assert namespace(rec) == "pretrain" and tags(rec, "pretrain") == {
        "pretrain/loss_d": 2.0,
        "pretrain/loss_g_adv": 1.0,
    }
    rec = {"stage": "diffusion", "diffusion_step": 5, "loss_diffusion": 0.3}
    assert namespace(rec) == "diffusion" and tags(rec, "diffusion") == {"diffusion/loss": 0.3}
    assert namespace({"epoch": 1, "pool_hardness": 4.0}) == "pool"

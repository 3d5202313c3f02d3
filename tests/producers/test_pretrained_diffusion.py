"""Bring your own diffusion model: a diffusers UNet (bare, or a pipeline directory) as the producer's model.

Each model here is saved by plain diffusers with ``save_pretrained``, then driven by ``synthkit train``
(``generator.pretrained``; ``train_steps: 0`` or fine-tuning), ``synthkit generate`` and ``synthkit audit``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from synthkit.cli import main
from synthkit.logs import error_lines
from synthkit.provenance import state_dict_hash
from tests.conftest import TINY_DIFFUSION


def _unet(num_classes: int | None = None, size: int = 16) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
        num_class_embeds=num_classes,
    )


def _scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")


def _weights_hash(unet_dir: Path) -> str:
    return state_dict_hash(load_file(unet_dir / "diffusion_pytorch_model.safetensors"))


def _train(model: Path, run: Path, *extra: str) -> int:
    return main(
        [
            "train",
            str(TINY_DIFFUSION),
            "--out",
            str(run),
            "--no-progress",
            f"--generator.pretrained={model}",
            "--generator.train_steps=0",
            "--train.epochs=2",
            *extra,
        ]
    )


def _generate(run: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--run", str(run), "--out", str(out), "--n", "8", "--no-progress", *extra])


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _samples(out: Path) -> list[dict]:
    from synthkit.shards import iter_samples

    return [s["meta"] for s in iter_samples(out)]


def test_a_bare_unconditional_unet_trains_generates_audits_and_is_verified(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    _unet().save_pretrained(model / "unet", safe_serialization=True)
    _scheduler().save_pretrained(model / "scheduler")  # next to the bare UNet: ../scheduler
    saved = _weights_hash(model / "unet")
    run = tmp_path / "run"
    assert _train(model / "unet", run) == 0
    final = json.loads((run / "final" / "final.json").read_text())
    record = final["producer"]
    assert record["pretrained"]["hash"] == saved and record["pretrained"]["layout"] == "unet"
    assert record["pretrained"]["scheduler"].endswith("scheduler/scheduler_config.json")
    assert record["train_steps"] == 0 and record["num_classes"] == 0
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["producer"]["pretrained"]["hash"] == saved  # recorded in the run from the start
    # stage 1 was skipped: no diffusion training step was logged, and the published UNet is the saved one
    assert not any("diffusion_step" in line for line in (run / "metrics.jsonl").read_text().splitlines())
    assert _weights_hash(run / "final" / "diffusion" / "unet") == saved

    out = tmp_path / "shards"
    assert _generate(run, out) == 0
    manifest = _manifest(out)
    assert manifest["producer"]["hashes"]["unet_ema"] == saved
    assert manifest["producer"]["pretrained"]["hash"] == saved
    metas = _samples(out)
    assert {m["condition"] for m in metas} == {None} and {m["condition_source"] for m in metas} == {"none"}

    report = tmp_path / "audit"
    assert main(["audit", str(out), "--real", "digits", "--extractor", "pixels", "--out", str(report)]) == 0
    assert json.loads((report / "report.json").read_text())["shards"]["hashes"]["unet_ema"] == saved
    capsys.readouterr()

    # the run holds its own copy: changing the source model afterwards changes nothing
    state = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()},
              str(model / "unet" / "diffusion_pytorch_model.safetensors"))  # fmt: skip
    assert _generate(run, tmp_path / "again") == 0
    assert [s["sha256"] for s in _manifest(tmp_path / "again")["shards"]] == [
        s["sha256"] for s in manifest["shards"]
    ]
    # swapping the run's weights is refused in one line
    victim = run / "final" / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copy(model / "unet" / "diffusion_pytorch_model.safetensors", victim)
    capsys.readouterr()
    assert _generate(run, tmp_path / "swapped") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "diffusion_pytorch_model.safetensors" in err[0] and "altered" in err[0]
    assert not (tmp_path / "swapped" / "manifest.json").exists()


def test_a_class_conditional_pipeline_directory(tmp_path: Path) -> None:
    model = tmp_path / "pipe"
    DDPMPipeline(unet=_unet(num_classes=4), scheduler=_scheduler()).save_pretrained(
        model, safe_serialization=True
    )
    saved = _weights_hash(model / "unet")
    run = tmp_path / "run"
    assert _train(model, run) == 0
    record = json.loads((run / "final" / "final.json").read_text())["producer"]
    assert record["pretrained"]["layout"] == "pipeline" and record["num_classes"] == 4
    assert record["pretrained"]["hash"] == saved
    out = tmp_path / "shards"
    assert _generate(run, out, "--n", "40", "--kind", "hard") == 0
    metas = _samples(out)
    # no k-means: the model's own classes, drawn uniformly, and said so
    assert {m["condition_source"] for m in metas} == {"model"}
    assert {m["condition"] for m in metas} <= {0, 1, 2, 3} and len({m["condition"] for m in metas}) > 1
    meaning = json.loads((run / "final" / "diffusion" / "synthkit.json").read_text())["class_ids"]
    assert meaning["source"] == "model" and meaning["num_classes"] == 4


def test_fine_tuning_a_class_conditional_model_needs_matching_conditions(tmp_path: Path, capsys) -> None:
    model = tmp_path / "pipe"
    DDPMPipeline(unet=_unet(num_classes=3), scheduler=_scheduler()).save_pretrained(
        model, safe_serialization=True
    )
    # tiny-diffusion has conditions.k=3: fine-tuning re-learns the three classes as its k-means conditions
    run = tmp_path / "run"
    assert _train(model, run, "--generator.train_steps=4") == 0
    record = json.loads((run / "final" / "final.json").read_text())["producer"]
    assert record["train_steps"] == 4 and record["condition_source"] == "kmeans"
    assert record["hashes"]["unet_ema"] != record["pretrained"]["hash"]  # fine-tuned
    capsys.readouterr()
    assert _train(model, tmp_path / "bad", "--generator.train_steps=4", "--conditions.k=5") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "has 3 classes" in err[0] and "conditions.k=3" in err[0]
    assert not (tmp_path / "bad" / "config.yaml").exists()


def test_size_and_channel_mismatches_are_one_line_errors_or_an_explicit_resize(
    tmp_path: Path, capsys
) -> None:
    model = tmp_path / "m24"
    DDPMPipeline(unet=_unet(size=24), scheduler=_scheduler()).save_pretrained(model, safe_serialization=True)
    assert _train(model, tmp_path / "bad") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "24 px" in err[0] and "generator.resize=true" in err[0]
    assert _train(model, tmp_path / "bad3", "--data.channels=3") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "channels" in err[0]
    run = tmp_path / "resized"
    assert _train(model, run, "--generator.resize=true") == 0
    record = json.loads((run / "final" / "final.json").read_text())["producer"]
    assert record["pretrained"]["size"] == 24 and record["pretrained"]["resized_to"] == 16
    out = tmp_path / "shards"
    assert _generate(run, out) == 0
    from synthkit.shards import iter_samples

    assert {s["image"].shape for s in iter_samples(out)} == {(16, 16, 1)}


def test_missing_or_pickled_models_are_refused(tmp_path: Path, capsys) -> None:
    assert _train(tmp_path / "nowhere", tmp_path / "r1") == 2
    assert "not a local directory" in capsys.readouterr().err
    model = tmp_path / "pickled"
    _unet().save_pretrained(model, safe_serialization=False)  # a .bin: pickle
    assert _train(model, tmp_path / "r2") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "safetensors only" in err[0]
    assert main(["config", str(TINY_DIFFUSION), "--generator.train_steps=0"]) == 2
    assert "needs a pretrained model" in capsys.readouterr().err


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_snippet(run: Path) -> str:
    """The README's plain-diffusers example, pointed at ``run``, with checks appended."""
    text = README.read_text()
    block = re.search(r"<!-- diffusers-example: begin -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's diffusers example is missing"
    code = block.group(1).replace("runs/qd", str(run))
    return code + (
        "import sys\n"
        "assert 'synthkit' not in sys.modules\n"
        "out = {'shape': list(images.shape), 'min': float(images.min()), 'max': float(images.max())}\n"
        "print(json.dumps({**out, 'pipeline': type(pipe).__name__}))\n"
    )


def test_our_run_opens_in_plain_diffusers_without_synthkit(diffusion_run: Path, tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(_readme_snippet(diffusion_run))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [8, 1, 16, 16] and out["pipeline"] == "DDPMPipeline"
    assert 0.0 <= out["min"] < out["max"] <= 1.0

"""A tiny diffusion run end to end: train, generate hard samples and pairs, read them with plain tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import UNet2DModel

from synthkit.cli import main
from synthkit.evaluate import evaluate
from synthkit.export import generate
from synthkit.shards import verify_shard_set

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "tiny-diffusion.yaml"


@pytest.mark.slow
def test_run_publishes_encoder_unet_and_pools(diffusion_run: Path) -> None:
    summary = json.loads((diffusion_run / "summary.json").read_text())
    assert summary["weights_in_sync"] and {"encoder", "unet_ema"} <= set(summary["hashes"])
    # warm-up epoch 0, then a pool at every epoch (refresh_every=1), guided and with growing t_split
    pools = summary["pools"]
    assert [p["epoch"] for p in pools] == [1, 2]
    assert pools[0]["pool_t_split"] < pools[1]["pool_t_split"]
    assert all(p["pool_guidance_scale"] > 0 for p in pools)
    assert verify_shard_set(diffusion_run / "pools" / "epoch-0001").ok
    records = [json.loads(x) for x in (diffusion_run / "metrics.jsonl").read_text().splitlines()]
    # the encoder trained on pool images
    assert any("hardness_syn" in r or "hardness_pair" in r for r in records)
    unet = UNet2DModel.from_pretrained(diffusion_run / "final" / "diffusion" / "unet")
    assert unet.config.num_class_embeds == 3
    assert evaluate(diffusion_run)["knn_accuracy"] > 0.15  # above chance (0.1) after 3 tiny epochs


@pytest.mark.slow
def test_generate_writes_hard_samples_and_pairs_readable_by_plain_webdataset(
    diffusion_run: Path, tmp_path: Path
) -> None:
    wds = pytest.importorskip("webdataset")
    res = generate(diffusion_run, tmp_path / "all", n=10, seed=1, progress=False)
    # --n counts samples per kind: 10 hard samples and 10 pair members (5 pairs)
    assert res.manifest["total"] == 20 and verify_shard_set(tmp_path / "all").ok
    urls = [str(tmp_path / "all" / s["name"]) for s in res.manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "json"))
    kinds = [m["kind"] for _, m in samples]
    assert kinds.count("hard") == 10 and kinds.count("pair_a") == 5 and kinds.count("pair_b") == 5
    a = {m["pair_id"]: (img, m) for img, m in samples if m["kind"] == "pair_a"}
    b = {m["pair_id"]: (img, m) for img, m in samples if m["kind"] == "pair_b"}
    assert set(a) == set(b) == set(range(5))
    assert all(-1 <= m["pair_similarity"] <= 1 and m["t_split"] == 0.7 for _, m in a.values())
    assert all(isinstance(m["hardness"], float) for _, m in samples if m["kind"] == "hard")
    assert samples[0][0].shape == (16, 16, 3)


@pytest.mark.slow
def test_generate_is_deterministic_and_kind_selects(diffusion_run: Path, tmp_path: Path) -> None:
    one = generate(diffusion_run, tmp_path / "one", n=6, seed=3, kind="pair", progress=False)
    two = generate(diffusion_run, tmp_path / "two", n=6, seed=3, kind="pair", progress=False)
    assert [s["sha256"] for s in one.manifest["shards"]] == [s["sha256"] for s in two.manifest["shards"]]
    assert one.manifest["total"] == 6
    again = generate(diffusion_run, tmp_path / "one", n=6, seed=3, kind="pair", progress=False)
    assert again.reused
    assert main(["generate", "--run", str(diffusion_run), "--out", str(tmp_path / "h"), "--n", "4",
                 "--kind", "hard", "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["total"] == 4


def test_gan_runs_without_hpg_refuse_pair_exports(trained_run: Path, tmp_path: Path) -> None:
    from synthkit.export import ExportError

    with pytest.raises(ExportError, match="without HPG"):
        generate(trained_run, tmp_path / "x", n=4, kind="pair", progress=False)

"""``synthkit generate --kind``: HPG pairs in shards, read back with plain webdataset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from synthkit.cli import main
from synthkit.run_files.final import load_final


def _read(out: Path) -> list[tuple[str, np.ndarray, dict]]:
    urls = sorted(str(p) for p in out.glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "png", "json")
    return [(k, np.array(Image.open(io.BytesIO(png))), json.loads(js)) for k, png, js in ds]


def test_pairs_round_trip_through_shards(pair_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pairs"
    assert main(["generate", "--run", str(pair_run), "--out", str(out), "--n", "24", "--kind", "pair",
                 "--no-progress"]) == 0  # fmt: skip
    samples = _read(out)
    assert len(samples) == 24
    by_pair: dict[int, dict[str, tuple[np.ndarray, dict]]] = {}
    for _, img, meta in samples:
        assert meta["kind"] in ("pair_a", "pair_b") and meta["producer"] == "hpg-cgan"
        by_pair.setdefault(meta["pair_id"], {})[meta["kind"]] = (img, meta)
    assert sorted(by_pair) == list(range(12))
    art = load_final(pair_run)
    for members in by_pair.values():
        (img_a, a), (img_b, b) = members["pair_a"], members["pair_b"]
        assert a["pair_similarity"] == b["pair_similarity"] and a["condition"] == b["condition"]
        assert a["generator_step"] == art.meta["steps"] and -1.0 <= a["pair_similarity"] <= 1.0
        # the recorded similarity is the encoder's, up to the PNG's 8-bit rounding
        x = torch.from_numpy(np.stack([img_a, img_b])).float().div(255).reshape(2, 1, 16, 16)
        with torch.no_grad():
            h = art.encoder.features(x)
        assert abs(float(F.cosine_similarity(h[:1], h[1:])) - a["pair_similarity"]) < 0.02
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["producer"]["kind"] == "pair" and manifest["total"] == 24


def test_kind_all_is_the_default_and_byte_identical(pair_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["generate", "--run", str(pair_run), "--out", str(a), "--n", "10", "--no-progress"]) == 0
    assert main(["generate", "--run", str(pair_run), "--out", str(b), "--n", "10", "--kind", "all",
                 "--seed", "0", "--no-progress"]) == 0  # fmt: skip
    kinds = [m["kind"] for _, _, m in _read(a)]
    # pairs first: their metadata has every field a hard sample's has (schema inference, shards/README.md)
    assert kinds == ["pair_a", "pair_b"] * 5 + ["hard"] * 10
    for tar in sorted(a.glob("*.tar")):
        assert tar.read_bytes() == (b / tar.name).read_bytes()


def test_kind_errors_are_explained(pair_run: Path, trained_run: Path, tmp_path: Path, capsys) -> None:
    code = main(["generate", "--run", str(trained_run), "--out", str(tmp_path / "x"), "--kind", "pair"])
    assert code == 2 and "without HPG" in capsys.readouterr().err
    code = main(
        ["generate", "--run", str(pair_run), "--out", str(tmp_path / "y"), "--kind", "pair", "--n", "5"]
    )
    assert code == 2 and "even" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

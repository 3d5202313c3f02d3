"""Diagnostics of one method run of ``teach_study.py``, computed afterwards from its checkpoints and log.

For every checkpoint of a run (``train.checkpoint_every`` epochs apart; the study keeps them all):

- **synthetic or real?** a linear probe on the checkpoint encoder's backbone features, fitted on half of
  ``n`` real training images and ``n`` synthetic images and scored on the other halves (0.5 = the encoder
  cannot tell them apart; near 1 = it separates them, e.g. by generator artefacts: a shortcut);
- **discriminator accuracy** (cGAN runs): the checkpoint's D on un-augmented images, threshold 0: the share of
  real *training* images it calls real, of held-out real (val) images it calls real (a gap between the two is
  D memorising the few real images, what DiffAugment/ADA counter), and of G's samples it calls fake;
- **pair similarity** (HPG): the mean backbone cosine of G_a's and G_b's images for the same (z, c), under the
  checkpoint encoder;
- **a sample grid**: the images the encoder trained on at that point (the raw G, fixed z and conditions), one
  row per checkpoint (the naive arm's frozen generator: one row).

From the log (``metrics.jsonl``, every ``train.log_every`` steps): hardness of real, synthetic and pair
views (per-sample NT-Xent), HPG's pair similarity against its target s*(t), D's hinge loss, lambda_hard.

The synthetic images are those the encoder was trained on: the raw generators (not their EMA copies), read
from the checkpoint's model files (``accelerate.save_state``: the encoder first, then D and the generators
in the order the producer prepared them; matched here by their parameter names), conditions drawn from the
checkpoint's condition frequencies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit.data.sources import ImageSet
from synthkit.encoders.model import Encoder, extract_features, load_encoder_weights
from synthkit.generators.cgan import build_discriminator, build_generator
from synthkit.images import rows_grid, to_uint8
from synthkit.metrics.linear_probe import linear_probe_accuracy
from synthkit.run_files.checkpoint import checkpoint_dirs, verify_checkpoint
from synthkit.run_files.final import load_final
from synthkit.samplers.conditions import Conditions, load_conditions
from synthkit.weights import load_state_dict

LOG_KEYS = (
    "loss_cl",
    "hardness_real",
    "hardness_syn",
    "hardness_pair",
    "pair_similarity",
    "pair_target",
    "real_positive_similarity",
    "loss_d",
    "lambda_hard",
)
GRID_PER_ROW = 12
MAX_GRID_ROWS = 11


def log_series(run: Path) -> dict[str, list[float]]:
    """Per logged training step: ``step`` and each of ``LOG_KEYS`` the run logged (NaN where absent)."""
    recs = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a last line cut short
            continue
        if isinstance(r, dict) and "loss_cl" in r and "epoch_time_s" not in r:
            recs.append(r)
    present = [k for k in LOG_KEYS if any(k in r for r in recs)]
    out: dict[str, list[float]] = {"step": [float(r["step"]) for r in recs]}
    for k in present:
        out[k] = [float(r.get(k, float("nan"))) for r in recs]
    return out


def syn_real_probe(enc: Encoder, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Test accuracy of a linear probe telling real from synthetic by backbone features (halves: fit/test)."""
    n = min(len(real), len(fake))
    g = torch.Generator().manual_seed(0)
    real = real[torch.randperm(len(real), generator=g)[:n]]
    x = torch.cat([extract_features(enc, real), extract_features(enc, fake[:n])])
    y = torch.cat([torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)])
    perm = torch.randperm(2 * n, generator=g)
    fit, test = perm[:n], perm[n:]
    return linear_probe_accuracy(x[fit], y[fit], x[test], y[test], epochs=100, batch_size=64, seed=0)


def _model_files(ckpt: Path) -> list[Path]:
    files = [p for p in ckpt.glob("model*.safetensors")]
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]) if "_" in p.stem else 0)


def _matching(files: list[Path], module: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    keys = set(module.state_dict())
    states = [load_state_dict(p) for p in files]
    return [s for s in states if set(s) == keys]


@torch.no_grad()
def _d_real_share(d: torch.nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> float:
    d.eval()
    return float((d(x, c).float().flatten() > 0).float().mean())


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def diagnose(run: Path, real: ImageSet, val: ImageSet, *, n: int = 512, seed: int = 0) -> dict[str, Any]:
    """Every diagnostic of ``run`` (see the module). ``real`` must be the run's own real training images (in
    the order the run had them: its conditions are per image), ``val`` held-out real images."""
    art = load_final(run)
    cfg = art.cfg
    kind = cfg.generator.kind
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"kind": kind, "log": log_series(run), "checkpoints": []}
    grid_rows: list[list[np.ndarray]] = []
    frozen = None
    if kind == "naive":  # the frozen generator of another run: the same samples at every checkpoint
        gen_run = Path(cfg.generator.run)  # type: ignore[attr-defined]
        source = load_final(gen_run).sampler
        assert source is not None
        torch.manual_seed(seed)
        frozen = source.sampler(seed)(n, torch.device("cpu")).float()
        grid_rows.append(list(to_uint8(frozen[:GRID_PER_ROW])))
    nets = _cgan_nets(art) if kind == "cgan" else None
    ckpts = checkpoint_dirs(run / "checkpoints")
    shown = set(np.linspace(0, len(ckpts) - 1, min(len(ckpts), MAX_GRID_ROWS)).round().astype(int).tolist())
    z = None
    for i, ckpt in enumerate(ckpts):
        verify_checkpoint(ckpt)
        state = json.loads((ckpt / "loop_state.json").read_text())
        rec: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"]}
        enc = Encoder(cfg.encoder, real.images.shape[1])
        load_encoder_weights(enc, ckpt / "model.safetensors")
        enc.eval()
        x_real = _to_float(real.images)
        if frozen is not None:
            rec["syn_real_probe"] = syn_real_probe(enc, x_real, frozen)
        elif nets is not None:
            files = _model_files(ckpt)[1:]  # [0] is the encoder
            d, gens = nets
            d_states = _matching(files, d)
            g_states = _matching(files, gens[0])
            if len(d_states) != 1 or len(g_states) != len(gens):
                raise SystemExit(
                    f"{ckpt}: expected one discriminator and {len(gens)} generator state(s) among "
                    f"{[p.name for p in files]}; the checkpoint layout changed"
                )
            d.load_state_dict(d_states[0])
            for gen, st in zip(gens, g_states, strict=True):
                gen.load_state_dict(st)
                gen.eval()
            meta = json.loads((ckpt / "producer_state.json").read_text())["conditions"]
            cond: Conditions | None = (
                load_conditions(ckpt / "producer_conditions.safetensors", meta) if meta is not None else None
            )
            k = cond.num_classes if cond is not None else 0
            if z is None:
                z = torch.randn(n, cfg.generator.z_dim, generator=g)  # type: ignore[attr-defined]
            c_fake = cond.sample(n, generator=torch.Generator().manual_seed(seed)) if k else None
            with torch.no_grad():
                fake = gens[0](z, c_fake).float()
                c_real = cond.labels if k else None
                if k and len(c_real) != len(real):
                    raise SystemExit(f"{ckpt}: {len(c_real)} conditions for {len(real)} real images")
                rec["d_real_train"] = _d_real_share(d, x_real, c_real)
                rec["d_fake_as_fake"] = 1.0 - _d_real_share(d, fake, c_fake)
                if k:  # held-out images have no condition: D judged with the condition of their nearest
                    feats = torch.nn.functional.normalize(extract_features(enc, real.images), dim=1)
                    fv = torch.nn.functional.normalize(extract_features(enc, val.images), dim=1)
                    c_val = c_real[(fv @ feats.t()).argmax(dim=1)]
                else:
                    c_val = None
                rec["d_real_val"] = _d_real_share(d, _to_float(val.images), c_val)
                if cfg.hpg.enabled:
                    x_a, x_b = gens[-2](z, c_fake).float(), gens[-1](z, c_fake).float()
                    fa, fb = extract_features(enc, x_a), extract_features(enc, x_b)
                    rec["pair_cos"] = float(torch.nn.functional.cosine_similarity(fa, fb).mean())
            rec["syn_real_probe"] = syn_real_probe(enc, x_real, fake)  # the probe trains: outside no_grad
            if i in shown:
                grid_rows.append(list(to_uint8(fake[:GRID_PER_ROW])))
                if cfg.hpg.enabled and not cfg.hsg.enabled:
                    grid_rows.append(list(to_uint8(x_b[:GRID_PER_ROW])))
        out["checkpoints"].append(rec)
    out["grid_rows"] = len(grid_rows)
    out["_grid"] = rows_grid(grid_rows, scale=2) if grid_rows else None
    return out


def _cgan_nets(art: Any) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """A discriminator and the raw generators of a cGAN method run (HSG's, then the pair's G_a and G_b), built
    from the architecture its final record names; the weights come from each checkpoint."""
    record = art.meta.get("producer") or {}
    raw = record.get("generator") or record.get("pair_generator")
    if not isinstance(raw, dict):
        raise SystemExit(f"{art.run_dir}: final.json names no cGAN generator")
    shape = int(raw["channels"]), int(raw["size"]), int(raw["num_classes"])
    gen_cfg, cfg = art.cfg.generator, art.cfg
    d = build_discriminator(gen_cfg, *shape, load_weights=False)
    count = int(cfg.hsg.enabled) + 2 * int(cfg.hpg.enabled)
    return d, [build_generator(gen_cfg, *shape, load_weights=False) for _ in range(count)]


def plot(diag: dict[str, Any], title: str, path: Path) -> None:
    """Four panels: hardness; pair similarity vs target; D accuracy and the synthetic-or-real probe;
    D's loss and lambda_hard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, ck = diag["log"], diag["checkpoints"]
    fig, ax = plt.subplots(1, 4, figsize=(18, 3.6))
    for k in ("hardness_real", "hardness_syn", "hardness_pair", "loss_cl"):
        if k in log:
            ax[0].plot(log["step"], log[k], label=k, lw=0.8)
    ax[0].set_title("hardness (per-sample NT-Xent)")
    for k, style in (("pair_similarity", "-"), ("pair_target", "--"), ("real_positive_similarity", ":")):
        if k in log:
            ax[1].plot(log["step"], log[k], style, label=k, lw=0.8)
    if ck and "pair_cos" in ck[0]:
        ax[1].plot([c["step"] for c in ck], [c["pair_cos"] for c in ck], "o", ms=3, label="pair cos (ckpt)")
    ax[1].set_title("HPG pair similarity vs s*(t)")
    for k in ("syn_real_probe", "d_real_train", "d_real_val", "d_fake_as_fake"):
        if ck and k in ck[0]:
            ax[2].plot([c["step"] for c in ck], [c[k] for c in ck], "o-", ms=3, label=k)
    ax[2].set_ylim(0, 1.02)
    ax[2].set_title("synthetic-or-real probe; D accuracy")
    for k in ("loss_d", "lambda_hard"):
        if k in log:
            ax[3].plot(log["step"], log[k], label=k, lw=0.8)
    ax[3].set_title("D hinge loss, lambda_hard")
    for a in ax:
        a.set_xlabel("encoder step")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

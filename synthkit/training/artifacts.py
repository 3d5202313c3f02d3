"""A run's published weights: what ``synthkit generate`` and ``synthkit eval`` load.

``RUN_DIR/final/`` holds safetensors weights (encoder, EMA generator, EMA pair generators G_a and G_b when
the run used HPG, the discriminator of a cGAN run, so that another run can start from this GAN), the
condition assignment, and
``final.json`` with the resolved config and the content hash of every weight file; it is written to a
temporary directory, checksummed and renamed, so it either exists complete or not at all. Loading checks
the checksums first, so a truncated or corrupt file is reported by name rather than half-loaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from synthkit.config import PipelineConfig, dump_yaml, from_dict, to_dict
from synthkit.encoders.model import Encoder
from synthkit.generators.cgan import Generator
from synthkit.producers.conditions import Conditions
from synthkit.producers.hard_samples import HardSampleProducer
from synthkit.producers.positive_pairs import PairProducer
from synthkit.provenance import created_by, state_dict_hash
from synthkit.training import checkpoint as ckpt

FINAL = "final"


@dataclass
class FinalArtifacts:
    cfg: PipelineConfig
    encoder: Encoder
    generator: Generator | None
    conditions: Conditions | None
    meta: dict[str, Any]
    pair_generators: tuple[Generator, Generator] | None = None


def _generator_meta(gen: Generator) -> dict[str, int]:
    return {"z_dim": gen.z_dim, "channels": gen.channels, "size": gen.size, "num_classes": gen.num_classes}


def save_final(
    run_dir: Path,
    cfg: PipelineConfig,
    encoder: Encoder,
    producer: HardSampleProducer | None,
    conditions: Conditions | None,
    *,
    epochs: int,
    steps: int,
    pairs: PairProducer | None = None,
    discriminator: nn.Module | None = None,
    generator_steps: int | None = None,
) -> dict[str, str]:
    """Write ``run_dir/final`` atomically; return the content hash of each weight set."""
    tmp = run_dir / f".tmp_{FINAL}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    enc_state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(enc_state, str(tmp / "encoder.safetensors"))
    hashes = {"encoder": state_dict_hash(enc_state)}
    meta: dict[str, Any] = {
        "config": to_dict(cfg),
        "in_channels": encoder.in_channels,
        "epochs": epochs,
        "steps": steps,
        "created_by": created_by(),
    }
    if generator_steps is not None:  # G's own updates: pre-training and its init run's included
        meta["generator_steps"] = generator_steps
    if producer is not None:
        g_state = {k: v.detach().cpu().contiguous() for k, v in producer.ema_generator.state_dict().items()}
        save_file(g_state, str(tmp / "generator_ema.safetensors"))
        hashes["generator_ema"] = state_dict_hash(g_state)
        gen = producer.generator
        meta["generator"] = _generator_meta(gen)
    if pairs is not None:
        for side, ema in (("a", pairs.ema_a), ("b", pairs.ema_b)):
            state = {k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()}
            save_file(state, str(tmp / f"generator_{side}_ema.safetensors"))
            hashes[f"generator_{side}_ema"] = state_dict_hash(state)
        gen = pairs.generator_a
        meta["pair_generator"] = _generator_meta(gen)
    if discriminator is not None:
        d_state = {k: v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()}
        save_file(d_state, str(tmp / "discriminator.safetensors"))
        hashes["discriminator"] = state_dict_hash(d_state)
    if conditions is not None:
        save_file({"labels": conditions.labels.contiguous()}, str(tmp / "conditions.safetensors"))
        meta["conditions"] = {"num_classes": conditions.num_classes, "source": conditions.source}
    meta["hashes"] = hashes
    (tmp / "final.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    (tmp / "config.yaml").write_text(dump_yaml(cfg))
    ckpt.publish(tmp, run_dir / FINAL)
    return hashes


def load_final(run_dir: str | Path) -> FinalArtifacts:
    """Load a run's final weights, after checking every file against its checksum."""
    run_dir = Path(run_dir)
    final = run_dir / FINAL
    if not final.is_dir():
        raise ckpt.CheckpointError(
            f"{run_dir} has no finished training run ({final} is missing); train it first or resume it"
        )
    ckpt.verify_checkpoint(final)
    try:
        meta = json.loads((final / "final.json").read_text())
        cfg = from_dict(meta["config"])
        encoder = Encoder(cfg.encoder, meta["in_channels"])
        encoder.load_state_dict(load_file(str(final / "encoder.safetensors")))
        generator = None
        if "generator" in meta:
            g = meta["generator"]
            generator = Generator(
                cfg.generator.z_dim, g["channels"], g["size"], g["num_classes"], base=cfg.generator.g_channels
            )
            generator.load_state_dict(load_file(str(final / "generator_ema.safetensors")))
        pair_generators = None
        if "pair_generator" in meta:
            g = meta["pair_generator"]
            pair = []
            for side in ("a", "b"):
                gen = Generator(
                    cfg.generator.z_dim,
                    g["channels"],
                    g["size"],
                    g["num_classes"],
                    base=cfg.generator.g_channels,
                )
                gen.load_state_dict(load_file(str(final / f"generator_{side}_ema.safetensors")))
                gen.eval()
                pair.append(gen)
            pair_generators = (pair[0], pair[1])
        conditions = None
        if "conditions" in meta:
            c = meta["conditions"]
            labels = load_file(str(final / "conditions.safetensors"))["labels"]
            conditions = Conditions(labels, c["num_classes"], c["source"])
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise ckpt.CheckpointError(f"cannot load the final weights in {final}: {e}") from e
        version = meta.get("created_by", {}).get("synthkit", "?")
        first = str(e).strip().splitlines()[1].strip()[:200] if "\n" in str(e).strip() else str(e)[:200]
        raise ckpt.CheckpointError(
            f"the weights in {final} (written by synthkit {version}) do not fit this synthkit's models "
            f"({first} ...); retrain the run with this version"
        ) from e
    except (SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise ckpt.CheckpointError(f"cannot load the final weights in {final}: {e}") from e
    encoder.eval()
    if generator is not None:
        generator.eval()
    return FinalArtifacts(cfg, encoder, generator, conditions, meta, pair_generators)


@dataclass
class GanInit:
    """What ``generator.init_run`` starts a run's cGAN from: a finished run's G (EMA) and D weights."""

    run: Path
    cfg: PipelineConfig
    generator: dict[str, Any]
    discriminator: dict[str, Any]
    conditions: Conditions | None
    hashes: dict[str, str]
    generator_steps: int


def load_gan_init(run_dir: str | Path) -> GanInit:
    """Load a finished cGAN run's generator (its EMA weights; G_a's for a pairs-only run), discriminator and
    conditions, checksums verified first."""
    run_dir = Path(run_dir)
    art = load_final(run_dir)
    gen = art.generator if art.generator is not None else (art.pair_generators or (None,))[0]
    d_path = run_dir / FINAL / "discriminator.safetensors"
    if gen is None or not d_path.exists():
        raise ckpt.CheckpointError(
            f"generator.init_run={run_dir} holds no cGAN with its discriminator; start from a cGAN run "
            "(hsg.enabled or hpg.enabled, e.g. --train.epochs=0 --generator.pretrain_steps=N)"
        )
    try:
        d_state = load_file(str(d_path))
    except SafetensorError as e:
        raise ckpt.CheckpointError(f"cannot load {d_path}: {e}") from e
    steps = int(art.meta.get("generator_steps", art.meta.get("steps", 0)))
    return GanInit(run_dir, art.cfg, gen.state_dict(), d_state, art.conditions, art.meta["hashes"], steps)

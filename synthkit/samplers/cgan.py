"""The frozen cGAN of a finished run: HSG's EMA generator and HPG's pair of EMA generators.

``final/`` of a cGAN run holds ``generator_ema`` (HSG), ``generator_a_ema``/``generator_b_ema`` (HPG), the
discriminator and the conditions: the trainer (``producers/cgan.py``) publishes them as one of these
(:meth:`CGanSampler.publish`), so that what is written and what ``load`` reads back are defined in one place.
Export samples the generators with conditions drawn from the run's final frequencies; ``generator.init_run``
starts another run's G, D and conditions from here; the naive baseline samples the HSG generator (G_a for a
pairs-only run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.config import PipelineConfig
from synthkit.errors import CheckpointError
from synthkit.generators.cgan import Generator, build_discriminator, build_generator
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.samplers.base import Sampler, Samples, chunk_generator, interleave
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from synthkit.objectives.scoring import Scorer

HSG_PRODUCER = "hsg-cgan"
HPG_PRODUCER = "hpg-cgan"


def generator_meta(
    gen_cfg: CGanConfig, channels: int, size: int, num_classes: int, weights_hash: str | None
) -> dict[str, Any]:
    """What a cGAN run records of its generators (``final.json``, manifests): shape, and for the user's
    generator where it comes from."""
    meta: dict[str, Any] = {
        "z_dim": gen_cfg.z_dim,
        "channels": channels,
        "size": size,
        "num_classes": num_classes,
    }
    if gen_cfg.builder is not None:
        meta.update(builder=gen_cfg.builder, weights=gen_cfg.weights, weights_hash=weights_hash)
    return meta


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode without gradients; a Generator skips its condition check (ids are drawn in
    range by construction: no host sync per forward pass)."""
    if isinstance(module, Generator):
        module.check_conditions = False
    return module.eval().requires_grad_(False)


class CGanSampler(Sampler):
    """The EMA generators of a cGAN run (``generator``: HSG's; ``pair``: HPG's G_a and G_b), its
    discriminator when published, conditions and generator step."""

    kind: ClassVar[str] = "cgan"

    def __init__(
        self,
        gen_cfg: CGanConfig,
        meta: dict[str, Any],
        *,
        generator: nn.Module | None = None,
        pair: tuple[nn.Module, nn.Module] | None = None,
        discriminator: nn.Module | None = None,
        conditions: Conditions | None = None,
        generator_steps: int = 0,
    ) -> None:
        self.gen_cfg, self.meta = gen_cfg, meta
        self.generator, self.pair, self.discriminator = generator, pair, discriminator
        self.conditions, self.generator_steps = conditions, generator_steps
        self.export_kinds = tuple(k for k, on in (("hard", generator), ("pair", pair)) if on is not None)

    @property
    def main_generator(self) -> nn.Module:
        """HSG's generator, or G_a of a pairs-only run: what the naive baseline and an init run start from."""
        if self.generator is not None:
            return self.generator
        assert self.pair is not None
        return self.pair[0]

    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> CGanSampler:
        gen_cfg = cfg.generator
        assert isinstance(gen_cfg, CGanConfig)
        raw = record.get("generator") or record.get("pair_generator")
        if not isinstance(raw, dict):
            raise CheckpointError(f"{directory}: the cGAN record names no generator")
        channels, size, k = int(raw["channels"]), int(raw["size"]), int(raw["num_classes"])
        hashes = record.get("hashes", {})

        def loaded(module: nn.Module, stem: str) -> nn.Module:
            path = directory / f"{stem}.safetensors"
            load_into(module, load_state_dict(path, hashes.get(stem, "missing")), str(path))
            return frozen(module)

        def generator(stem: str) -> nn.Module:
            return loaded(build_generator(gen_cfg, channels, size, k, load_weights=False), stem)

        hard = generator("generator_ema") if cfg.hsg.enabled else None
        pair = (generator("generator_a_ema"), generator("generator_b_ema")) if cfg.hpg.enabled else None
        discriminator = None
        if (directory / "discriminator.safetensors").is_file():
            d = build_discriminator(gen_cfg, channels, size, k, load_weights=False)
            discriminator = loaded(d, "discriminator")
        c = record.get("conditions")
        conditions = load_conditions(directory / "conditions.safetensors", c) if c is not None else None
        meta = generator_meta(gen_cfg, channels, size, k, raw.get("weights_hash"))
        return cls(
            gen_cfg,
            meta,
            generator=hard,
            pair=pair,
            discriminator=discriminator,
            conditions=conditions,
            generator_steps=int(record.get("generator_steps", 0)),
        )

    def publish(self, directory: Path) -> dict[str, Any]:
        """Write the generators, the discriminator and the conditions into ``directory`` (a run's ``final/``);
        return the record ``load`` reads them back with (the trainer adds its kind)."""
        hashes: dict[str, str] = {}
        record: dict[str, Any] = {}
        if self.generator is not None:
            hashes["generator_ema"] = save_state_dict(self.generator, directory / "generator_ema.safetensors")
            record["generator"] = dict(self.meta)
        if self.pair is not None:
            for side, module in zip("ab", self.pair, strict=True):
                path = directory / f"generator_{side}_ema.safetensors"
                hashes[f"generator_{side}_ema"] = save_state_dict(module, path)
            record["pair_generator"] = dict(self.meta)
        if self.discriminator is not None:
            path = directory / "discriminator.safetensors"
            hashes["discriminator"] = save_state_dict(self.discriminator, path)
        if self.conditions is not None:
            record["conditions"] = save_conditions(self.conditions, directory / "conditions.safetensors")
        record["generator_steps"] = self.generator_steps
        record["hashes"] = hashes
        return record

    def _generators(self, kind: str) -> tuple[nn.Module, nn.Module | None]:
        if kind == "hard" and self.generator is not None:
            return self.generator, None
        if kind == "pair" and self.pair is not None:
            return self.pair
        raise ValueError(f"this cGAN run has no {kind} generator")

    @torch.no_grad()
    def make(self, kind: str, start: int, count: int, seed: int, scorer: Scorer) -> Samples:
        gen, gen_b = self._generators(kind)
        k = count if gen_b is None else count // 2
        g = chunk_generator(seed, kind, start)
        z = torch.randn(k, self.gen_cfg.z_dim, generator=g)
        cond = self.conditions
        c = cond.sample(k, generator=g) if cond is not None and cond.num_classes else None
        base = {
            "producer": HSG_PRODUCER if gen_b is None else HPG_PRODUCER,
            "condition_source": cond.source if cond else "none",
            "condition_k": cond.num_classes if cond and cond.source == "kmeans" else None,
        }
        if gen_b is None:
            images = gen(z, c)
            meta = [{**base, "condition": None if c is None else int(c[j])} for j in range(k)]
        else:
            images = interleave(gen(z, c), gen_b(z, c))
            meta = [
                {**base, "condition": None if c is None else int(c[j // 2]), "pair_id": (start + j) // 2}
                for j in range(count)
            ]
        return Samples(images.float(), meta)

    def export_info(self) -> dict[str, Any]:
        cond = self.conditions
        info: dict[str, Any] = {
            "generator_step": self.generator_steps,
            "condition_source": cond.source if cond else "none",
        }
        if self.gen_cfg.builder is not None:
            info["generator"] = self.meta
        return info

    def sampler(self, seed: int) -> Callable[[int, torch.device], torch.Tensor]:
        """The EMA generator (G_a for a pairs-only run), conditions drawn from the run's frequencies."""
        gen, cond, z_dim = self.main_generator, self.conditions, self.gen_cfg.z_dim

        @torch.no_grad()
        def sample(n: int, device: torch.device) -> torch.Tensor:
            gen.to(device)
            c = cond.sample(n).to(device) if cond is not None and cond.num_classes else None
            return gen(torch.randn(n, z_dim, device=device), c)

        return sample

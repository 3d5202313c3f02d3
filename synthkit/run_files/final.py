"""A finished run's files: ``RUN_DIR/final/``, verified, and what a reader loads from it.

``RUN_DIR/final/`` holds the encoder (safetensors), the objective's state when it keeps one (MoCo's momentum
encoder and queue), whatever the producer publishes (the cGAN's EMA generators and discriminator, the
diffusion UNet in diffusers' layout, the conditions), and ``final.json`` with the resolved config, the
producer's kind and record, and the content hash of every weight file (``training/artifacts.py`` writes
it). Loading checks every file against the checksums, and every weight set against the hash recorded for
it, so a truncated, corrupt or replaced file is reported by name in one line rather than half-loaded;
whatever torch, safetensors or diffusers raise while loading becomes one such line (:func:`first_line`).

This sits beneath export, training (``generator.init_run``, the naive baseline) and the audit: what they
need of a finished run is its encoder, its objective and its frozen sampler (``samplers/``), which the
producer registry names by the run's recorded kind.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthkit.config import PipelineConfig, from_dict
from synthkit.encoders.model import Encoder
from synthkit.errors import CheckpointError, ConfigError, SynthkitError
from synthkit.objectives.base import Objective, build_objective
from synthkit.registry import PRODUCERS
from synthkit.run_files import checkpoint as ckpt
from synthkit.weights import load_into, load_state_dict

if TYPE_CHECKING:
    from synthkit.samplers.base import Sampler
    from synthkit.samplers.conditions import Conditions

FINAL = "final"
FINAL_JSON = "final.json"


class RunArtifacts:
    """A finished run, verified: config, frozen encoder and (loaded on first use) objective and sampler."""

    def __init__(self, run_dir: Path, cfg: PipelineConfig, encoder: Encoder, meta: dict[str, Any]) -> None:
        self.run_dir, self.cfg, self.encoder, self.meta = run_dir, cfg, encoder, meta

    @property
    def final_dir(self) -> Path:
        return self.run_dir / FINAL

    @property
    def hashes(self) -> dict[str, str]:
        return dict(self.meta["hashes"])

    @property
    def producer_kind(self) -> str | None:
        record = self.meta.get("producer")
        return record["kind"] if isinstance(record, dict) else None

    @cached_property
    def objective(self) -> Objective:
        obj = build_objective(
            self.cfg.objective, self.encoder, self.cfg.encoder.proj_dim, self.cfg.train.seed
        )
        try:
            obj.load(self.final_dir, self.hashes)
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - torch raises many types
            raise CheckpointError(
                f"{self.final_dir}: the objective's state cannot be loaded ({first_line(e)})"
            ) from e
        for module in obj.modules().values():
            module.eval()
        return obj

    @cached_property
    def sampler(self) -> Sampler | None:
        """The run's frozen sampler (None for a plain CL run, or a producer that publishes none, like the
        naive baseline), its weights verified against their hashes."""
        record = self.meta.get("producer")
        if record is None:
            return None
        kind = record.get("kind")
        try:
            cls = PRODUCERS.get(kind).sampler_class()
        except ConfigError as e:
            raise CheckpointError(
                f"{self.final_dir}: the run's producer {kind!r} is not available: {e}"
            ) from e
        if cls is None:
            return None
        try:
            return cls.load(self.cfg, self.final_dir, record)
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - torch, safetensors and diffusers raise many types
            raise CheckpointError(
                f"{self.final_dir}: the run's {kind} producer cannot be loaded ({first_line(e)})"
            ) from e

    @property
    def conditions(self) -> Conditions | None:
        sampler = self.sampler
        return sampler.conditions if sampler is not None else None


def load_final(run_dir: str | Path) -> RunArtifacts:
    """Load a run's final weights, after checking every file against its checksum."""
    run_dir = Path(run_dir)
    final = run_dir / FINAL
    if not final.is_dir():
        raise CheckpointError(
            f"{run_dir} has no finished training run ({final} is missing); train it first or resume it"
        )
    ckpt.verify_checkpoint(final)
    try:
        meta = json.loads((final / FINAL_JSON).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("hashes"), dict):
            raise CheckpointError(f"{final / FINAL_JSON} is not a synthkit final.json (no hashes)")
        cfg = from_dict(meta["config"])
        # the stem the run recorded (runs from before encoder.stem record none: the default is theirs)
        encoder = Encoder(cfg.encoder, int(meta["in_channels"]), stem=meta.get("stem"))
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {final / FINAL_JSON}: {type(e).__name__}: {e}") from e
    path = final / "encoder.safetensors"
    try:
        load_into(encoder, load_state_dict(path, meta["hashes"].get("encoder", "missing")), str(path))
    except SynthkitError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever torch raises for weights that do not fit
        raise CheckpointError(f"{path} cannot be loaded ({first_line(e)})") from e
    encoder.eval()
    return RunArtifacts(run_dir, cfg, encoder, meta)


def first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (torch's and diffusers'
    messages run to many lines)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__

"""A run's published weights: what ``synthkit generate``, ``synthkit eval`` and the audit load.

``RUN_DIR/final/`` holds the encoder (safetensors), the objective's state when it keeps one (MoCo's momentum
encoder and queue), whatever the producer publishes (the cGAN's EMA generators and discriminator, the
diffusion UNet in diffusers' layout, the conditions), and ``final.json`` with the resolved config, the
producer's kind and record, and the content hash of every weight file. It is written to a temporary
directory, checksummed and renamed, so it either exists complete or not at all. Loading checks every file
against the checksums, and every weight set against the hash recorded for it, so a truncated, corrupt or
replaced file is reported by name in one line rather than half-loaded; whatever torch, safetensors or
diffusers raise while loading becomes one such line (:func:`first_line`).

``final/`` is replaced only by a new complete result, in one step, and only the files synthkit wrote in the
old one are deleted (``training/checkpoint.py``: ``publish``).
"""

from __future__ import annotations

import json
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthkit.atomic import write_text_atomic
from synthkit.config import PipelineConfig, dump_yaml, from_dict, to_dict
from synthkit.encoders.model import Encoder
from synthkit.errors import CheckpointError, ConfigError, SynthkitError
from synthkit.objectives.base import Objective, build_objective
from synthkit.provenance import created_by
from synthkit.registry import PRODUCERS
from synthkit.training import checkpoint as ckpt
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from synthkit.producers.base import Producer
    from synthkit.producers.conditions import Conditions

FINAL = "final"
FINAL_JSON = "final.json"


def publish_final(
    run_dir: Path,
    cfg: PipelineConfig,
    encoder: Encoder,
    objective: Objective,
    producer: Producer | None,
    *,
    epochs: int,
    steps: int,
) -> dict[str, str]:
    """Write ``run_dir/final`` atomically; return the content hash of each weight set."""
    tmp = run_dir / f".tmp_{FINAL}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    hashes = {"encoder": save_state_dict(encoder, tmp / "encoder.safetensors")}
    hashes.update(objective.save(tmp))
    record = producer.publish(tmp) if producer is not None else None
    if record is not None:
        hashes.update(record["hashes"])
        record["kind"] = cfg.generator.kind  # the registry name (or import path) that loads it back
    meta: dict[str, Any] = {
        "config": to_dict(cfg),
        "in_channels": encoder.in_channels,
        "stem": encoder.stem,
        "epochs": epochs,
        "steps": steps,
        "created_by": created_by(),
        "objective": objective.describe(),
        "producer": record,
        "hashes": hashes,
    }
    write_text_atomic(tmp / FINAL_JSON, json.dumps(meta, indent=2, sort_keys=True))
    write_text_atomic(tmp / "config.yaml", dump_yaml(cfg))
    ckpt.publish(tmp, run_dir / FINAL)
    return hashes


class RunArtifacts:
    """A finished run, verified: config, frozen encoder and (loaded on first use) objective and producer."""

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
    def producer(self) -> Producer | None:
        """The run's published producer (None for a plain CL run), weights verified against their hashes."""
        record = self.meta.get("producer")
        if record is None:
            return None
        kind = record.get("kind")
        try:
            cls = PRODUCERS.get(kind).impl_class()
        except ConfigError as e:
            raise CheckpointError(
                f"{self.final_dir}: the run's producer {kind!r} is not available: {e}"
            ) from e
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
        producer = self.producer
        return getattr(producer, "conditions", None) if producer is not None else None


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

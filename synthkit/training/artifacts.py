"""Publishing a run's weights: ``RUN_DIR/final/``, written once training ends.

``final/`` holds the encoder (safetensors), the objective's state when it keeps one (MoCo's momentum encoder
and queue), whatever the producer publishes (the cGAN's EMA generators and discriminator, the diffusion UNet
in diffusers' layout, the conditions), and ``final.json`` with the resolved config, the producer's kind and
record, and the content hash of every weight file. It is written to a temporary directory, checksummed and
renamed, so it either exists complete or not at all; it is replaced only by a new complete result, in one
step, and only the files synthkit wrote in the old one are deleted (``run_files/checkpoint.py``:
``publish``). Reading it back, verified, is ``run_files/final.py``'s ``load_final``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthkit.atomic import write_text_atomic
from synthkit.config import PipelineConfig, dump_yaml, to_dict
from synthkit.encoders.model import Encoder
from synthkit.objectives.base import Objective
from synthkit.provenance import created_by
from synthkit.run_files import checkpoint as ckpt
from synthkit.run_files.final import FINAL, FINAL_JSON
from synthkit.weights import save_state_dict

if TYPE_CHECKING:
    from synthkit.producers.base import Producer


def publish_final(
    run_dir: Path,
    cfg: PipelineConfig,
    encoder: Encoder,
    objective: Objective,
    producer: Producer,
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
    record = producer.publish(tmp)  # None: no producer (NullProducer)
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

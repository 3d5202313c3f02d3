"""The producer protocol: anything that makes synthetic data for the encoder while it trains (a trainer).

A producer is one kind of ``generator.kind`` (registry ``PRODUCERS``): the cGAN family (HSG generator, HPG
pair, one shared discriminator), the diffusion pool producer, the naive baseline, or a third party's.
The training loop (``training/loop.py``) and the run files know producers only through this protocol,
built by ``for_training`` inside a run, on every process:
``prepare`` its modules and optimizers with the run's Accelerator (so checkpoints hold them);
``start`` once before the first epoch (e.g. GAN pre-training); ``on_epoch_start`` (condition or pool
refresh); ``contribute`` to an encoder step: synthetic chunks, and a generator loss the same backward
pass carries, with the optimizers to step; ``after_step`` (EMAs); ``finish`` after the last epoch;
``save_state``/``load_state`` for what Accelerate does not checkpoint; ``publish`` its final weights.

What a finished run publishes is read back as a frozen sampler (``samplers/base.py``): the producer class
names it (``Sampler``), and export, ``generator.init_run``, the naive baseline and the audit use only that.
A run without a producer trains with :class:`NullProducer`, whose every hook does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.errors import RunError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.config import PipelineConfig
    from synthkit.data.sources import ImageSet
    from synthkit.data.views import Views
    from synthkit.objectives.base import Objective


@dataclass
class TrainContext:
    """What a producer may use of the run it trains in.

    ``batches`` iterates the loop's real batches (``epoch(e)`` -> (indices, uint8 images)); ``encoder()``
    returns the current bare encoder; ``log(record)`` writes to the run's metrics at the current step.
    """

    cfg: PipelineConfig
    accelerator: Accelerator
    channels: int
    size: int
    real: ImageSet | None
    batches: Any
    views: Views
    objective: Objective
    run_dir: Path
    encoder: Callable[[], nn.Module]
    log: Callable[[dict[str, Any]], None]
    progress: bool = True

    def per_step(self, ratio: float) -> int:
        """``ratio`` x this process's share of ``train.batch_size``, at least 1: synthetic images a step."""
        return max(1, round(self.cfg.train.batch_size // self.accelerator.num_processes * ratio))

    def check_shape(self, sample: Callable[[int, torch.device], torch.Tensor], who: str) -> None:
        """A RunError naming ``who`` unless ``sample`` makes images of the training data's shape (one probe
        image, drawn before the loop seeds each process)."""
        probe = sample(1, self.accelerator.device)
        if tuple(probe.shape[1:]) != (self.channels, self.size, self.size):
            shape = "x".join(str(v) for v in probe.shape[1:])
            data = f"{self.channels}x{self.size}x{self.size}"
            raise RunError(f"{who} makes {shape} images but the training data are {data}")

    def real_in_memory(self, who: str) -> ImageSet:
        """The in-memory real training images a producer trains on; a RunError when there are none."""
        if self.real is None:
            raise RunError(f"{who} train(s) on the in-memory real data (data.*), not on a mix of shard sets")
        return self.real


@dataclass
class StepInput:
    """One encoder step's real data, as the producer sees it."""

    images: torch.Tensor  # float in [0, 1], on the device
    index: Any  # the batch's indices into ``ctx.real`` (a tensor) or sample keys (streamed data)
    epoch: int
    t: float  # training progress in epochs (epoch + fraction of the epoch)


@dataclass
class Chunk:
    """Synthetic images for the encoder's batch; with ``partner``, image j and partner j are one positive pair
    (their four views one group). ``name`` keys the step's records (``hardness_<name>``). Under data
    parallelism every process contributes chunks of the same sizes in the same order (the step's gathers
    exchange no sizes: ``synthkit.distributed``)."""

    images: torch.Tensor
    name: str
    partner: torch.Tensor | None = None


@dataclass
class Contribution:
    """What a producer adds to one encoder step."""

    chunks: list[Chunk] = field(default_factory=list)
    loss: torch.Tensor | None = None  # generator terms, back-propagated with the encoder's loss
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)  # zeroed before, stepped after
    # 0-d tensors on the device (read once per train.log_every: keep them there) or floats
    records: dict[str, Any] = field(default_factory=dict)


class Producer:
    """Base class with the protocol's defaults; subclasses override what they do."""

    kind: ClassVar[str] = ""
    #: the config dataclass of the ``generator`` section for this kind
    Config: ClassVar[type]
    #: the frozen sampler ``load_final`` reads back from what ``publish`` wrote (None: nothing to sample)
    Sampler: ClassVar[type | None] = None

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> Producer:
        raise NotImplementedError

    def prepare(self, accelerator: Accelerator) -> None:
        """Hand trainable modules and optimizers to ``accelerator.prepare``."""

    def start(self, resumed: bool) -> None:
        """Once, before the first epoch of this process's run (``resumed``: from a checkpoint)."""

    def on_epoch_start(self, epoch: int) -> None:
        """At the start of every epoch, before its first step."""

    def contribute(self, batch: StepInput) -> Contribution | None:
        """Synthetic chunks (and a generator loss) for this step, or None."""
        return None

    def after_step(self, records: dict[str, Any]) -> None:
        """After the optimizers stepped; ``records`` are the step's values averaged over processes: 0-d
        tensors on the device (reading one, ``float(t)``, makes the host wait for the device) or floats."""

    def finish(self) -> None:
        """After the last epoch, before the run publishes (e.g. train what no epoch reached)."""

    def save_state(self, directory: Path) -> None:
        """Write what Accelerate does not checkpoint (EMAs, conditions, ...) into ``directory``."""

    def load_state(self, directory: Path) -> None:
        """Read what ``save_state`` wrote; every process."""

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        """The weight files ``save_state`` writes (``producer_*.safetensors``) and the module each holds: a
        resume checks each file's keys, shapes and dtypes against its module before anything is loaded.
        Files not named here are left to ``load_state`` to check."""
        return {}

    def fingerprint_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights must agree on every process at the end (the summary checks them)."""
        return {}

    def publish(self, directory: Path) -> dict[str, Any]:
        """Write the final weights into ``directory`` (``RUN/final`` before its checksums); return the record
        stored as ``final.json["producer"]``: at least ``{"kind": ..., "hashes": {file stem: hash}}``."""
        return {"kind": self.kind, "hashes": {}}

    def summary(self) -> dict[str, Any]:
        """Extra figures for ``summary.json``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What this producer is, for ``run.json``: its kind and the identity of any model it starts from."""
        return {"kind": self.kind}


class NullProducer(Producer):
    """No producer (plain contrastive learning): contributes nothing and publishes nothing."""

    kind: ClassVar[str] = "none"

    def publish(self, directory: Path) -> dict[str, Any] | None:  # type: ignore[override]
        return None

    def describe(self) -> dict[str, Any] | None:  # type: ignore[override]
        return None

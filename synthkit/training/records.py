"""A step's records on the device: reduced over processes without a host read, read once per log interval.

An encoder step returns its records (``loss_cl``, hardness per chunk, the producer's losses) as 0-d tensors
on the device, and schedule values (``lambda_hard``, a fixed ``pair_target``) as Python floats. Reading a
device value on the host (``.item()``, ``float(t)``) makes the host wait for the device; once per step that
wait is what a GPU step would spend its time on. :class:`StepRecords` keeps them where they are:

- per step, the tensors are stacked into one vector; with several processes that vector (and the floats) is
  averaged over the processes with one all-reduce on the device, so that the producer's ``after_step`` (e.g.
  HPG's adaptive target) sees the global batch's numbers on every process, as before;
- the epoch's sums, the first non-finite value of each record and the step it appeared at are updated on
  the device (a handful of small kernels, no read);
- :meth:`read` (every ``train.log_every`` steps, and at each epoch's end) reads everything in one transfer.

Divergence is therefore noticed at the next read: a non-finite loss stops the run with the same one-line
error as before (``training diverged at step S``, S the step where the value first went non-finite), at most
``train.log_every`` steps after it happened and always before the epoch's checkpoint. The steps between run
on non-finite numbers and are thrown away with the run. Every process reads the same reduced numbers at the
same steps, so every process stops at the same read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from synthkit.distributed import world


@dataclass
class _Layout:
    """The running sums and first non-finite values of one set of record keys."""

    tensor_keys: tuple[str, ...]
    float_keys: tuple[str, ...]
    sums: torch.Tensor  # device, float64 (float32 where the device has no float64)
    host_sums: list[float]
    first_step: torch.Tensor  # device, long; -1 while finite
    first_value: torch.Tensor  # device
    host_bad: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class Read:
    """What :meth:`StepRecords.read` returns: the last step's records and the epoch's means as floats, and
    the first non-finite record (key, value, step), if any."""

    last: dict[str, float]
    means: dict[str, float]
    diverged: tuple[str, float, int] | None


class StepRecords:
    """Per-step records of one epoch, kept on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.world = world()[1]
        self.sum_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.layouts: dict[tuple[tuple[str, ...], tuple[str, ...]], _Layout] = {}
        self.steps = 0
        self._last: tuple[_Layout, torch.Tensor, dict[str, float]] | None = None
        self._order: dict[str, None] = {}  # every key, in the order first seen (the log's order)

    def add(self, record: dict[str, Any], step: int) -> dict[str, Any]:
        """Record one step (``step``: the loop's step count after it); return the record as every process
        sees it: reduced over processes (tensors stay 0-d tensors on the device; floats stay floats with one
        process, become 0-d tensors with several). Values that are neither are passed through."""
        self._order.update(dict.fromkeys(record))
        tensor_keys = tuple(k for k, v in record.items() if isinstance(v, torch.Tensor))
        float_keys = tuple(k for k, v in record.items() if isinstance(v, float) and not isinstance(v, bool))
        parts = [record[k].detach().reshape(1).float() for k in tensor_keys]
        out = dict(record)
        if self.world > 1:  # the floats join the vector: one all-reduce (mean) for all of them
            if float_keys:
                floats = torch.tensor([record[k] for k in float_keys])
                parts.append(floats.to(self.device, non_blocking=True))  # staged, no wait
            tensor_keys, float_keys = tensor_keys + float_keys, ()
        vec = torch.cat(parts) if parts else torch.zeros(0, device=self.device)
        if self.world > 1 and len(vec):
            dist.all_reduce(vec, op=dist.ReduceOp.SUM)
            vec = vec / self.world
            out.update(zip(tensor_keys, vec.unbind(), strict=True))
        key = (tensor_keys, float_keys)
        layout = self.layouts.get(key)
        if layout is None:
            n = len(tensor_keys)
            layout = self.layouts[key] = _Layout(
                tensor_keys,
                float_keys,
                torch.zeros(n, dtype=self.sum_dtype, device=self.device),
                [0.0] * len(float_keys),
                torch.full((n,), -1, dtype=torch.long, device=self.device),
                torch.zeros(n, device=self.device),
            )
        if len(vec):
            layout.sums += vec.to(self.sum_dtype)
            new_bad = ~torch.isfinite(vec) & (layout.first_step < 0)
            layout.first_step = torch.where(new_bad, step, layout.first_step)
            layout.first_value = torch.where(new_bad, vec, layout.first_value)
        floats = {k: float(record[k]) for k in float_keys}
        for i, k in enumerate(float_keys):
            layout.host_sums[i] += floats[k]
            if not math.isfinite(floats[k]) and k not in layout.host_bad:
                layout.host_bad[k] = (step, floats[k])
        self.steps += 1
        self._last = (layout, vec, floats)
        return out

    def read(self) -> Read:
        """The last step's records, the means so far (sums / steps) and the first non-finite record, in
        one read from the device."""
        layouts = list(self.layouts.values())
        pieces: list[torch.Tensor] = []
        for layout in layouts:
            pieces += [layout.sums.double(), layout.first_step.double(), layout.first_value.double()]
        last_layout, last_vec, last_floats = self._last if self._last is not None else (None, None, {})
        if last_vec is not None:
            pieces.append(last_vec.double())
        flat = torch.cat(pieces).tolist() if pieces else []  # the one host read
        means: dict[str, float] = {}
        first: list[tuple[int, str, float]] = []
        at = 0
        for layout in layouts:
            n = len(layout.tensor_keys)
            sums, steps, values = flat[at : at + n], flat[at + n : at + 2 * n], flat[at + 2 * n : at + 3 * n]
            at += 3 * n
            for k, total, s, v in zip(layout.tensor_keys, sums, steps, values, strict=True):
                means[k] = means.get(k, 0.0) + total
                if s >= 0:
                    first.append((int(s), k, v))
            for k, total in zip(layout.float_keys, layout.host_sums, strict=True):
                means[k] = means.get(k, 0.0) + total
            first += [(s, k, v) for k, (s, v) in layout.host_bad.items()]
        last: dict[str, float] = dict(last_floats)
        if last_layout is not None:
            last.update(zip(last_layout.tensor_keys, flat[at:], strict=True))
        last = {k: last[k] for k in self._order if k in last}
        means = {k: means[k] for k in self._order if k in means}
        steps = max(1, self.steps)
        diverged = None
        if first:
            s, k, v = min(first)
            diverged = (k, v, s)
        return Read(last, {k: v / steps for k, v in means.items()}, diverged)

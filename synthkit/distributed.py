"""What the many-process parts share: a gather that carries gradients back, global group ids, reductions.

Data parallelism splits a global batch of B images over W processes, B/W each. A contrastive loss compares
every view with every other view of the *global* batch (SimCLR, Chen et al., ICML 2020, section 2.2:
"we aggregate BN mean and variance over all devices" and the negatives are the whole batch), so each process
gathers the projections of all processes. :func:`gather_rows` does this inside autograd, the way
solo-learn's ``GatherLayer`` and ``torch.distributed.nn.functional.all_gather`` do, with one choice made
explicit: which rows a process scores, and hence what its gradient must be.

Each process scores only its own rows as anchors (against all rows as candidates) and takes the mean:
``L_r = (W / 2B) * sum_{i in r} l_i``, so that ``sum_r L_r = W * L`` where L is the one-process loss over
the same global batch. The backward pass of the gather sums the gradients that every process's loss sends
to a row (an all-reduce) and hands each process the slice of its own rows, so process r's gradient w.r.t.
its projections is ``d(sum_s L_s)/dz_r = W dL/dz_r``; DDP then averages over the W processes, giving
exactly ``dL/dtheta``, the one-process gradient. (Scoring every row on every process and returning the
local slice without the all-reduce, as solo-learn does, gives the same loss value but ``dL/dtheta / W``.)

Equal shares. In a training step every process holds the same layout of rows: ``train.batch_size / W``
real images and the producer's chunks, whose sizes come from the config (the cGAN's ``b_syn`` and
``b_pair``, the diffusion pool's draws), the same on every process; a producer that contributes is asked to
keep it so (``producers/base.py``, ``Chunk``). The step's gathers therefore pass ``equal=True`` and exchange
no sizes; the general functions (:func:`gather_rows` without it, :func:`gather_groups`) still accept
unequal counts, at the price of an exchange and a host read.

Without an initialised process group (or with one process) every function here is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, number of processes) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every process's ``x`` (rows may differ in number): padded to the largest, gathered, trimmed."""
    longest = max(sizes)
    padded = x if len(x) == longest else torch.cat([x, x.new_zeros((longest - len(x), *x.shape[1:]))])
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return [t[:n] for t, n in zip(out, sizes, strict=True)]


def _row_counts(n: int, device: torch.device) -> list[int]:
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world()[1])]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(c) for c in counts]


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward: all-reduce (sum) of the gradient, then this process's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat(_gather_padded(x.detach(), sizes))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, *, equal: bool = False) -> tuple[torch.Tensor, slice]:
    """The rows of ``x`` of every process, in rank order, and the slice that holds this process's rows.

    Differentiable: the gradient of any loss of the result reaches this process's ``x`` summed over what
    every process's loss sent to those rows (see the module docstring for why the sum is right under DDP).
    Processes may hold different numbers of rows; ``equal=True`` says they hold the same number (a training
    step's shares: see below), which saves exchanging the counts (a collective and a host read per call).
    """
    rank, size = world()
    if size == 1:
        return x, slice(0, len(x))
    sizes = [len(x)] * size if equal else _row_counts(len(x), x.device)
    start = sum(sizes[:rank])
    return _GatherRows.apply(x, sizes, rank), slice(start, start + len(x))


@torch.no_grad()
def gather_groups(groups: torch.Tensor) -> torch.Tensor:
    """Every process's positive-group ids, made globally unique: a group never spans processes (its views
    are made on one), so each process's ids are shifted past those of the processes before it."""
    _, size = world()
    if size == 1:
        return groups
    local = groups.long()
    span = int(local.max()) + 1 if len(local) else 0
    spans = _row_counts(span, local.device)
    sizes = _row_counts(len(local), local.device)
    parts = _gather_padded(local, sizes)
    offsets = [sum(spans[:r]) for r in range(size)]
    return torch.cat([p + o for p, o in zip(parts, offsets, strict=True)])


@torch.no_grad()
def global_groups(groups: torch.Tensor) -> torch.Tensor:
    """Every process's positive-group ids (non-negative, equal counts on every process), made globally
    unique without exchanging sizes or spans: id g of rank r becomes ``g * W + r``. Equality within a process
    is kept and no two processes share an id; unlike :func:`gather_groups` the ids are not contiguous (a
    loss only compares them)."""
    rank, size = world()
    if size == 1:
        return groups
    local = groups.long() * size + rank
    return torch.cat(_gather_padded(local, [len(local)] * size))


@torch.no_grad()
def reduce_values(values: dict[str, Any], device: torch.device, op: str = "mean") -> dict[str, Any]:
    """The floats in ``values`` reduced over processes (``mean``, ``max`` or ``sum``) in one collective;
    other values (counters, strings, flags: the same on every process) pass through.

    Every process must call it at the same point with the same keys (a step's records are made by the same
    code on every process); the result is the same on all of them.
    """
    _, size = world()
    keys = sorted(k for k, v in values.items() if isinstance(v, float))
    if size == 1 or not keys:
        return dict(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    ops = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    dist.all_reduce(t, op=ops[op])
    if op == "mean":
        t /= size
    return {**values, **dict(zip(keys, t.tolist(), strict=True))}

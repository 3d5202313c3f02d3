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

:class:`FailTogether` makes an error on one process end every process (see there).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import torch
import torch.distributed as dist

from synthkit.errors import SynthkitError


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


# --------------------------------------------------------------------------- failing together

#: how often each process looks for another process's failure (seconds)
FAILURE_POLL_S = 0.25
#: how long a process that saw another one fail lets its launcher, or a collective's error, end it before it
#: ends itself (seconds): the bound, with FAILURE_POLL_S, on how long it outlives the failure
FAILURE_GRACE_S = 10.0
#: the exit status of a process stopped because another one failed (the command line's for bad input)
PEER_EXIT_STATUS = 2
_FAILED = "synthkit/failed"

_log = logging.getLogger(__name__)


class PeerFailedError(SynthkitError):
    """Another process of the launch failed first and reported it; this one stops too, and says nothing more
    on the command line (``quiet``): the error is printed once, by the process that met it."""

    quiet = True


def _default_store() -> Any | None:
    """The key-value store of the default process group (torchrun's), or None (no group, or a torch
    without the accessor)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private accessor: without it, processes fail apart as before
        return None


class FailTogether:
    """Makes an error on any process end every process of the launch, in bounded time, printed once.

    Without it, a process that raises (a corrupt shard only it reads, a bug in work only the main process
    does: the kNN monitor, k-means, pool sampling, publishing) leaves the others in their next collective:
    gloo fails them with a "Connection closed by peer" traceback once the process is gone, NCCL waits for
    its watchdog (minutes), and a process on another machine, out of its launcher's reach, may wait longer.

    How: the process that fails writes its rank and message to the process group's key-value store (the
    first writer wins, by compare-and-set) and lets its error go on up: the command line prints it as one
    line and exits with status 2 (a bug stays a traceback). Every process runs a watcher thread that looks
    for that key every ``FAILURE_POLL_S`` seconds; when another process has failed, it logs one record
    naming it and gives the process ``FAILURE_GRACE_S`` seconds to end otherwise (a launcher such as
    torchrun stops the others when the first one exits; a collective whose peer has gone raises, and that
    error, coming second, is raised as :class:`PeerFailedError`, which the command line does not print),
    then ends it with exit status 2 (``os._exit``: the main thread may be blocked inside a collective,
    which nothing else interrupts). So the launcher reports the failing process as the root cause, and no
    process outlives it by more than about ``FAILURE_POLL_S + FAILURE_GRACE_S``.

    Work in flight on a stopped process is dropped as a kill would drop it: checkpoints and ``final/`` are
    written to a temporary directory and renamed, so nothing half-written is published. With one process,
    or without a process group, it does nothing. Use as ``with FailTogether() as team: ...`` and call
    ``team.watch()`` once the process group exists.
    """

    def __init__(self) -> None:
        self.store: Any | None = None
        self.rank, self.world = 0, 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FailTogether:
        return self

    def watch(self) -> None:
        """Start watching for other processes' failures (all processes, once the group exists)."""
        self.rank, self.world = world()
        self.store = _default_store() if self.world > 1 else None
        if self.store is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="synthkit-fail-together", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        store, me = self.store, str(self.rank)
        while not self._stop.wait(FAILURE_POLL_S):
            try:
                if not store.check([_FAILED]):
                    continue
                first = store.get(_FAILED).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the store is gone (the launch is ending): stop watching
                return
            rank, _, message = first.partition(":")
            if rank == me:  # this process failed first; its main thread reports it
                return
            _log.warning("stopping: process %s failed: %s", rank, message)
            if self._stop.wait(FAILURE_GRACE_S):  # the main thread ended (quietly) in time
                return
            for handler in logging.getLogger("synthkit").handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(PEER_EXIT_STATUS)

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, Exception) or self.store is None:
            self._stop.set()
            return
        message = " ".join(str(exc).split()) or type(exc).__name__
        mine = f"{self.rank}:{message}"
        try:
            first = self.store.compare_set(_FAILED, "", mine).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - no store any more: fail alone, as without this
            first = mine
        self._stop.set()
        if first != mine:  # another process failed first, and prints the error
            raise PeerFailedError(f"process {first.partition(':')[0]} failed first") from exc

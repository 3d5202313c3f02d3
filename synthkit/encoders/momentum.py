"""MoCo's momentum encoder and key queue (He et al., CVPR 2020; Chen et al., MoCo v2, 2020).

The key encoder is an exponential moving average of the query encoder, theta_k <- m theta_k + (1 - m)
theta_q, updated after every optimizer step; its projections of the current batch's views are the
positive keys, and a FIFO queue of earlier keys supplies the negatives. Buffers (batch-norm statistics)
are copied, not averaged, as in the reference implementation.

Single-process batch-norm sees the query and key batches separately, so MoCo's shuffle-BN (which needs
several devices) is not applied; the keys' batch-norm statistics are those of their own batch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class MomentumEncoder(nn.Module):
    """A momentum copy of ``encoder`` plus a queue of ``queue_size`` normalised keys of ``dim`` dimensions.

    Example::

        momentum = MomentumEncoder(encoder, queue_size=4096, dim=128)
        k = momentum.keys(torch.cat([v1, v2]))      # no gradient
        ...  # loss, backward, optimizer step
        momentum.update(encoder, m=0.99)
        momentum.enqueue(k[len(v1):])
    """

    def __init__(self, encoder: nn.Module, queue_size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.key_encoder = copy.deepcopy(encoder)
        self.key_encoder.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # how many real keys have entered; until the queue is full, its random initial keys are negatives
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        return self.key_encoder(views)

    @torch.no_grad()
    def update(self, encoder: nn.Module, m: float) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for every parameter in a few fused (``torch._foreach``)
        kernels; buffers copied. Nothing is read back from the device."""
        keys = list(self.key_encoder.parameters())
        queries = [p.detach() for p in encoder.parameters()]
        if len(keys) != len(queries):
            raise ValueError("the momentum encoder and the encoder have different parameters")
        torch._foreach_lerp_(keys, queries, 1.0 - m)
        key_buffers = list(self.key_encoder.buffers())
        query_buffers = list(encoder.buffers())
        if len(key_buffers) != len(query_buffers):
            raise ValueError("the momentum encoder and the encoder have different buffers")
        if key_buffers:
            torch._foreach_copy_(key_buffers, query_buffers)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries with ``keys`` (normalised); wraps around the end of the queue."""
        keys = F.normalize(keys.detach().float(), dim=1).to(self.queue.device)
        size = self.queue.shape[0]
        if len(keys) >= size:
            keys = keys[-size:]
        n = len(keys)
        idx = (self.ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[idx] = keys
        self.ptr.copy_((self.ptr + n) % size)
        self.filled.copy_(torch.clamp(self.filled + n, max=size))

"""MoCo's momentum encoder: the EMA update rule, copied buffers, and the FIFO key queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthkit.config import EncoderConfig
from synthkit.encoders.model import Encoder
from synthkit.encoders.momentum import MomentumEncoder


def _encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig(width=4, proj_hidden=8, proj_dim=6), in_channels=1)


def test_starts_as_a_frozen_copy_and_moves_by_the_momentum_rule() -> None:
    enc = _encoder()
    mom = MomentumEncoder(enc, queue_size=8, dim=6)
    assert all(not p.requires_grad for p in mom.key_encoder.parameters())
    before = [p.clone() for p in mom.key_encoder.parameters()]
    assert all(torch.equal(pk, pq) for pk, pq in zip(before, enc.parameters(), strict=True))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
        enc.backbone.trunk[0].running_mean.fill_(3.0)  # a buffer (batch-norm statistics)
    mom.update(enc, m=0.9)
    for pk, pq, p0 in zip(mom.key_encoder.parameters(), enc.parameters(), before, strict=True):
        assert torch.allclose(pk, 0.9 * p0 + 0.1 * pq, atol=1e-6)
    assert torch.equal(mom.key_encoder.backbone.trunk[0].running_mean, enc.backbone.trunk[0].running_mean)


def test_queue_is_fifo_and_wraps_around() -> None:
    mom = MomentumEncoder(_encoder(), queue_size=5, dim=3)
    assert torch.allclose(mom.queue.norm(dim=1), torch.ones(5))
    a = torch.eye(3) * 2.0
    mom.enqueue(a)  # rows 0..2, normalised
    assert torch.allclose(mom.queue[:3], torch.eye(3)) and int(mom.ptr) == 3 and int(mom.filled) == 3
    b = -torch.eye(3)
    mom.enqueue(b)  # rows 3, 4, then wraps to row 0
    assert torch.allclose(mom.queue[3:], -torch.eye(3)[:2])
    assert torch.allclose(mom.queue[0], -torch.eye(3)[2]) and int(mom.ptr) == 1 and int(mom.filled) == 5
    assert torch.allclose(mom.queue[1:3], torch.eye(3)[1:])  # the oldest surviving keys are untouched


def test_keys_carry_no_gradient_and_match_the_copy() -> None:
    enc = _encoder().eval()
    mom = MomentumEncoder(enc, queue_size=4, dim=6).eval()
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    k = mom.keys(x)
    assert not k.requires_grad
    assert torch.allclose(F.normalize(k, dim=1), F.normalize(enc(x).detach(), dim=1), atol=1e-6)


def test_a_step_scores_against_the_queue_itself_and_updates_it_in_place() -> None:
    """MoCo's step reads the queue without copying it and enqueues into the same storage after backward."""
    from accelerate import Accelerator

    from synthkit.config import MoCoConfig
    from synthkit.objectives.moco import MoCo

    acc = Accelerator(cpu=True)
    enc = _encoder()
    obj = MoCo(MoCoConfig(queue_size=16), enc, 6, seed=0)
    storage, before = obj.momentum.queue.data_ptr(), obj.momentum.queue.clone()
    views = torch.rand(8, 1, 8, 8)
    groups = torch.arange(4).repeat(2)
    loss = obj.per_view(enc(views), views, groups, 4, train=True).mean()
    loss.backward()  # the queue is only read by the loss: nothing it saved for backward was a view of it
    obj.after_step(enc, acc)
    assert obj.momentum.queue.data_ptr() == storage
    assert not torch.equal(obj.momentum.queue[:4], before[:4]) and torch.equal(
        obj.momentum.queue[4:], before[4:]
    )

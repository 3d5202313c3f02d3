"""MoCo v2 loss with groups: parity with the symmetrised MoCo v2 reference and with a loop reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from synthkit.losses.moco import moco_per_view


def _moco_v2_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """The reference implementation's logits: [q.k+, q.queue] with the positive at index 0 (He et al.)."""
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ queue.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction="none")


def test_groups_of_two_are_symmetrised_moco_v2() -> None:
    torch.manual_seed(0)
    n, d = 5, 8
    q1, q2, k1, k2 = (torch.randn(n, d) for _ in range(4))
    queue = torch.randn(32, d)
    ids = torch.arange(n)
    got = moco_per_view(torch.cat([q1, q2]), torch.cat([k1, k2]), torch.cat([ids, ids]), queue, 0.2)
    want = torch.cat([_moco_v2_reference(q1, k2, queue, 0.2), _moco_v2_reference(q2, k1, queue, 0.2)])
    assert torch.allclose(got, want, atol=1e-5)


def test_pair_group_of_four_against_loop_reference() -> None:
    torch.manual_seed(1)
    groups = [0, 1, 1, 0, 1, 1]  # image 0 (two views); a pair of images 1, 2 (four views)
    q, k, queue = torch.randn(6, 4), torch.randn(6, 4), torch.randn(10, 4)
    tau = 0.3
    qn, kn, nn_ = (F.normalize(t.double(), dim=1) for t in (q, k, queue))
    want = []
    for i in range(6):
        pos = [j for j in range(6) if j != i and groups[j] == groups[i]]
        cand = [math.exp(float(qn[i] @ kn[j]) / tau) for j in pos]
        cand += [math.exp(float(qn[i] @ nn_[j]) / tau) for j in range(10)]
        z = sum(cand)
        want.append(-sum(float(qn[i] @ kn[j]) / tau - math.log(z) for j in pos) / len(pos))
    got = moco_per_view(q, k, torch.tensor(groups), queue, tau)
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)


def test_queue_negatives_raise_the_loss() -> None:
    torch.manual_seed(2)
    q = torch.randn(4, 6)
    ids = torch.arange(2)
    groups = torch.cat([ids, ids])
    far = -q.repeat(8, 1)  # negatives pointing away from every query
    near = q.repeat(8, 1)  # negatives equal to the queries: maximally confusing
    loss_far = moco_per_view(q, q.clone(), groups, far, 0.2).mean()
    loss_near = moco_per_view(q, q.clone(), groups, near, 0.2).mean()
    assert loss_near > loss_far + 1.0

"""The MoCo v2 contrastive loss with positive groups.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020, and Chen et
al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020: a query q is scored against
its positive key (a momentum encoder's projection of another view of the same image) and a queue of keys
from earlier batches as negatives; InfoNCE with temperature tau.

Generalised to positive groups (a generated pair's four views), in the supervised-contrastive form used
by ``multi_positive``: the positives of query i are the keys of the other views of its group, the
candidates are those positives plus the queue, and the loss averages over the positives. With groups of
two views this is the symmetrised MoCo v2 loss (q1 against k2 and q2 against k1) row for row.

Example::

    q = f(views)                      # M x D, with gradients
    k = f_momentum(views).detach()    # M x D, rows aligned with q
    loss = moco_per_view(q, k, groups, queue, temperature=0.2).mean()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthkit.losses.precision import float32


def moco_per_view(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Per-query losses, shape (M,).

    Args:
        q: M x D query projections.
        k: M x D key projections of the same views (row i of k is the key of the view of row i of q).
        groups: M group ids; the keys of the other views of a query's group are its positives.
        queue: Q x D negative keys (need not be normalised).
        temperature: tau.
        validate: check that every query has a positive (a host sync; off for groups that hold two views
            or more by construction, as the objective's).

    Computed in float32 whatever the autocast (``synthkit.losses.precision``). ``queue`` is only read: the
    caller may update it in place after the backward pass.
    """
    fits = q.shape == k.shape and groups.shape == (q.shape[0],)
    if not fits or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, groups {tuple(groups.shape)}, "
            f"queue {tuple(queue.shape)}"
        )
    m = q.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=q.device)
    positives = (groups[:, None] == groups[None, :]) & ~eye
    n_pos = positives.sum(1)
    if validate and bool((n_pos == 0).any()):
        raise ValueError("every group needs at least two views; some view has no positive")
    with float32(q):  # similarities and logsumexp in float32 whatever the autocast
        qn, kn = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        # the normalised copy is what backward keeps: an in-place update of ``queue`` later is safe
        nq = F.normalize(queue.float(), dim=1)
        s_keys = (qn @ kn.t() / temperature).masked_fill(~positives, float("-inf"))  # batch keys: positives
        s_queue = qn @ nq.t() / temperature
        log_z = torch.logsumexp(torch.cat([s_keys, s_queue], dim=1), dim=1, keepdim=True)
        log_prob = s_keys - log_z
        return -(log_prob.masked_fill(~positives, 0.0).sum(1) / n_pos)

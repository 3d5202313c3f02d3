"""Multi-positive NT-Xent: NT-Xent where a positive group may hold more than two views.

Wu et al. (AAAI 2023) make the views of a generated positive pair (x_a, x_b) positives of each other; with
two views each, the four views form one group. We use the supervised-contrastive form of Khosla et al.,
"Supervised Contrastive Learning", NeurIPS 2020, eq. (2) ("L_out"), with group ids in place of labels:
for view i with positives P(i) (the other views of its group) and candidates A(i) (every view but i),

    loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau) ).

When every group holds exactly two views this is NT-Xent (SimCLR) view for view.

Example::

    z = f(torch.cat([views1, views2]))             # 2N x D
    groups = torch.cat([ids, ids])                 # pair members share an id
    loss = multi_positive_nt_xent_per_view(z, groups, temperature=0.5).mean()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthkit.losses.precision import float32


def multi_positive_nt_xent_per_view(
    z: torch.Tensor,
    groups: torch.Tensor,
    temperature: float = 0.5,
    *,
    anchors: slice | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Per-view losses, shape (M,), or (len(anchors),) with ``anchors``.

    Args:
        z: M x D projections of all views.
        groups: M integer group ids; views with the same id are positives of each other. Every group must
            hold at least two views.
        temperature: tau; similarities are cosine / tau.
        anchors: the rows whose losses are returned (default: all). Every row is a candidate either way;
            under data parallelism ``z`` is the global batch and ``anchors`` this process's rows
            (``synthkit.distributed``), which costs len(anchors) x M similarities instead of M x M.
        validate: check that every anchor has a positive (a ValueError if not). The check reads a value
            back from the device (a host sync); callers whose groups hold two views or more by construction
            (``view_groups`` ids of two stacked view sets, as every objective passes) turn it off.

    Computed in float32 whatever the autocast (``synthkit.losses.precision``).
    """
    if z.dim() != 2 or groups.shape != (z.shape[0],):
        raise ValueError(
            f"z must be M x D and groups of length M, got {tuple(z.shape)} and {tuple(groups.shape)}"
        )
    m = z.shape[0]
    rows = slice(0, m) if anchors is None else anchors
    index = torch.arange(m, device=z.device)
    eye = index[rows, None] == index[None, :]
    positives = (groups[rows, None] == groups[None, :]) & ~eye
    n_pos = positives.sum(1)
    if validate and bool((n_pos == 0).any()):
        raise ValueError("every group needs at least two views; some view has no positive")
    with float32(z):  # logits and logsumexp in float32 whatever the autocast
        zn = F.normalize(z.float(), dim=1)
        logits = (zn[rows] @ zn.t() / temperature).masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        # masked sum; the -inf on the diagonal is never selected
        return -(log_prob.masked_fill(~positives, 0.0).sum(1) / n_pos)


def view_groups(sizes: list[int], paired: list[bool]) -> torch.Tensor:
    """Group ids of the images of consecutive chunks; a ``paired`` chunk shares ids with the next chunk.

    ``view_groups([N, H, P, P], [False, False, True, False])`` gives real and hard images their own ids and
    image j of the a-chunk and of the b-chunk a shared one. The ids of the rows of two stacked view sets are
    ``torch.cat([ids, ids])``.
    """
    ids: list[torch.Tensor] = []
    next_id = 0
    i = 0
    while i < len(sizes):
        n = sizes[i]
        ids.append(torch.arange(next_id, next_id + n))
        if paired[i]:
            if i + 1 >= len(sizes) or sizes[i + 1] != n:
                raise ValueError("a paired chunk must be followed by a chunk of the same size")
            ids.append(torch.arange(next_id, next_id + n))
            i += 1
        next_id += n
        i += 1
    return torch.cat(ids) if ids else torch.empty(0, dtype=torch.long)

"""Multi-positive NT-Xent against a loop reference, and its parity with plain NT-Xent for groups of two."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthkit.losses.multi_positive import multi_positive_nt_xent_per_view, view_groups
from synthkit.losses.nt_xent import nt_xent_per_view


def _reference(z: torch.Tensor, groups: list[int], tau: float) -> list[float]:
    """SupCon L_out written out with loops (Khosla et al., 2020, eq. 2), group ids as labels."""
    zn = F.normalize(z.double(), dim=1)
    m = len(groups)
    out = []
    for i in range(m):
        denom = sum(math.exp(float(zn[i] @ zn[a]) / tau) for a in range(m) if a != i)
        pos = [p for p in range(m) if p != i and groups[p] == groups[i]]
        out.append(-sum(math.log(math.exp(float(zn[i] @ zn[p]) / tau) / denom) for p in pos) / len(pos))
    return out


def test_matches_loop_reference_with_groups_of_four_and_two() -> None:
    torch.manual_seed(0)
    groups = [0, 1, 2, 2, 0, 1, 2, 2, 3, 3]  # two real images, one pair (four views), one of two views
    z = torch.randn(len(groups), 8)
    got = multi_positive_nt_xent_per_view(z, torch.tensor(groups), temperature=0.3)
    assert torch.allclose(
        got.double(), torch.tensor(_reference(z, groups, 0.3), dtype=torch.float64), atol=1e-5
    )


def test_equals_nt_xent_when_every_group_has_two_views() -> None:
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    ids = torch.arange(6)
    got = multi_positive_nt_xent_per_view(torch.cat([z1, z2]), torch.cat([ids, ids]), temperature=0.5)
    assert torch.allclose(got, nt_xent_per_view(z1, z2, temperature=0.5), atol=1e-6)


def test_gradient_is_finite_and_pulls_group_members_together() -> None:
    torch.manual_seed(2)
    z = torch.randn(8, 4, requires_grad=True)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    opt = torch.optim.SGD([z], lr=0.5)

    def sim01() -> float:
        return float(F.cosine_similarity(z[0].detach(), z[3].detach(), dim=0))

    before = sim01()
    for _ in range(20):
        loss = multi_positive_nt_xent_per_view(z, groups, 0.5).mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(z.grad).all()
        opt.step()
    assert sim01() > before + 0.1


def test_a_view_without_positive_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least two views"):
        multi_positive_nt_xent_per_view(torch.randn(3, 4), torch.tensor([0, 0, 1]))


def test_view_groups_pairs_consecutive_chunks() -> None:
    ids = view_groups([2, 1, 3, 3], [False, False, True, False])
    assert ids.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    with pytest.raises(ValueError, match="same size"):
        view_groups([2, 3], [True, False])


def test_anchor_rows_score_against_every_row_and_sum_to_the_whole_gradient() -> None:
    """What one process computes under data parallelism: its rows' losses, exactly the whole batch's."""
    torch.manual_seed(3)
    z = torch.randn(10, 4, requires_grad=True)
    groups = torch.tensor([0, 1, 2, 2, 3, 0, 1, 2, 2, 3])
    full = multi_positive_nt_xent_per_view(z, groups, 0.3)
    shares = [slice(0, 4), slice(4, 10)]
    parts = [multi_positive_nt_xent_per_view(z, groups, 0.3, anchors=rows) for rows in shares]
    torch.testing.assert_close(torch.cat(parts), full)
    # each share's mean, weighted by its size, adds up to the whole batch's mean loss and its gradient
    (g_full,) = torch.autograd.grad(full.mean(), z)
    g_parts = sum(torch.autograd.grad(p.mean() * len(p) / len(full), z)[0] for p in parts)
    torch.testing.assert_close(g_parts, g_full)


def test_without_a_process_group_the_gather_is_the_identity() -> None:
    from synthkit.distributed import gather_groups, gather_rows, reduce_values, world

    assert world() == (0, 1)
    x = torch.randn(3, 2)
    rows_all, mine = gather_rows(x)
    assert rows_all is x and mine == slice(0, 3)
    g = torch.tensor([0, 0, 1])
    assert gather_groups(g) is g
    assert reduce_values({"a": 1.5, "b": 2}, torch.device("cpu")) == {"a": 1.5, "b": 2}

"""The scorer: the reference batch encoded once per scorer (and again when the weights change), MoCo
scored without it, and the caller's random state left as it was."""

from __future__ import annotations

import pytest
import torch

from synthkit.config import EncoderConfig, ObjectiveConfig, ViewsConfig, from_dict
from synthkit.data.views import Views
from synthkit.determinism import seeded
from synthkit.encoders.model import Encoder
from synthkit.objectives.base import build_objective
from synthkit.objectives.scoring import Scorer, pair_groups


def _scorer(objective: str = "simclr", seed: int = 0, reference: torch.Tensor | None = None) -> Scorer:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(width=4, proj_hidden=16, proj_dim=8), 1).eval()
    cfg = ObjectiveConfig() if objective == "simclr" else from_dict({"objective": {"name": "moco"}}).objective
    obj = build_objective(cfg, enc, 8, seed=0)
    ref = _images(1, 12) if reference is None else reference
    return Scorer(enc, Views(ViewsConfig(), 1, 8), obj, ref, seed=seed)


def _images(seed: int, n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _count_forwards(scorer: Scorer) -> list[int]:
    rows: list[int] = []
    scorer.encoder.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    return rows


def test_the_reference_is_encoded_once_for_every_chunk() -> None:
    scorer = _scorer()
    rows = _count_forwards(scorer)
    first = scorer.hardness(_images(2), seed=5)
    assert sorted(rows) == [6, 6, 12, 12]  # the chunk's two views and the reference's, once
    rows.clear()
    scorer.hardness(_images(3), seed=6)
    assert rows == [6, 6]  # the next chunk: its own views only
    # a fresh scorer gives the same numbers: the cache changes the cost, not the values
    assert torch.equal(first, _scorer().hardness(_images(2), seed=5))


def test_a_change_of_the_weights_recomputes_the_reference() -> None:
    scorer = _scorer()
    scorer.hardness(_images(2), seed=5)
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        next(scorer.encoder.parameters()).mul_(1.5)
    changed = scorer.hardness(_images(2), seed=5)
    fresh = _scorer()
    with torch.no_grad():
        next(fresh.encoder.parameters()).mul_(1.5)
    assert torch.equal(changed, fresh.hardness(_images(2), seed=5))


def test_the_reference_views_come_from_the_scorer_seed() -> None:
    a, b = _scorer(seed=0), _scorer(seed=1)
    x = _images(2)
    assert not torch.equal(a.hardness(x, seed=5), b.hardness(x, seed=5))
    # and they do not depend on the chunk's seed: the same chunk seed, the same reference, the same values
    assert torch.equal(a.hardness(x, seed=5), _scorer(seed=0).hardness(x, seed=5))


def test_moco_scores_without_the_reference() -> None:
    """A MoCo query's loss involves its own group's keys and the queue only: no reference is encoded, and
    another reference batch changes nothing."""
    scorer = _scorer("moco")
    rows = _count_forwards(scorer)
    x, groups = _images(2), pair_groups(3)
    h = scorer.hardness(x, seed=5, groups=groups)
    assert rows == [6, 6]
    other = _scorer("moco", reference=torch.zeros(3, 1, 8, 8))
    assert torch.equal(h, other.hardness(x, seed=5, groups=groups))


def test_hardness_restores_the_callers_random_state() -> None:
    scorer = _scorer()
    torch.manual_seed(123)
    cpu = torch.random.get_rng_state()
    # CUDA's generators: this CUDA build without a GPU queues a seed for CUDA's initialisation when a block
    # calls torch.manual_seed; the scorer must neither re-seed them nor queue anything (torch internals)
    queued = len(torch.cuda._lazy_seed_tracker.get_calls())
    scorer.hardness(_images(2), seed=5)
    scorer.hardness(_images(3), seed=6)
    assert torch.equal(torch.random.get_rng_state(), cpu)
    assert len(torch.cuda._lazy_seed_tracker.get_calls()) == queued
    if torch.cuda.is_available():  # pragma: no cover - on a GPU machine
        scorer.encoder.cuda()
        scorer.reference = scorer.reference.cuda()
        gpu = torch.cuda.get_rng_state_all()
        scorer.hardness(_images(2).cuda(), seed=5)
        assert all(torch.equal(a, b) for a, b in zip(gpu, torch.cuda.get_rng_state_all(), strict=True))


@pytest.mark.parametrize("objective", ["simclr", "moco"])
def test_hardness_grad_matches_hardness(objective: str) -> None:
    scorer = _scorer(objective)
    x = _images(2)
    with seeded(5):
        h = scorer.hardness_grad(x.clone().requires_grad_(True))
    torch.testing.assert_close(h.detach(), scorer.hardness(x, seed=5))

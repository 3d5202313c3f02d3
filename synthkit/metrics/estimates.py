"""PRDC and memorisation above ``audit.exact_max``: stated estimates, each with a measured error.

Exact PRDC and memorisation compare every synthetic sample with every real image (quadratic: 3.4 s at
8k x 8k on one CPU thread, about 15 hours at 1M x 1M). Above ``exact_max`` points per set the audit uses:

- **PRDC on seeded samples** (:func:`sampled_prdc`): ``sample`` points per set, as Naeem et al. (ICML 2020)
  do (10,000 real and 10,000 fake), drawn ``repeats`` times with one seeded generator; the score is the
  mean over the draws and its error the standard deviation between them. PRDC depends on the sample size
  (the k-NN radii shrink as points are added), so an estimate compares with audits at the same ``sample``,
  not with exact PRDC on a larger set; ``eval/bench_audit_scale.py`` shows both on one 20k x 20k set.
- **memorisation by an IVF index** (:func:`ivf_neighbours`, :mod:`synthkit.metrics.ann`): every
  synthetic sample's nearest real image and every real image's nearest other real image (the yardstick).
  A found neighbour is never nearer than the true one, so a miss can only raise a distance. The error is
  measured on a seeded probe of ``probe`` samples (and ``probe`` real images) against the exact search:
  recall@1 of both searches and the share of probed samples whose suspect verdict is the exact one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from synthkit.metrics.ann import build_ivf, exact_search, recall_at_1, search
from synthkit.metrics.neighbours import DEFAULT_CHUNK
from synthkit.metrics.prdc import PRDCResult, prdc


def _draw(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``size`` sorted distinct indices of ``n`` (all of them when ``n <= size``)."""
    if n <= size:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:size].sort().values


@dataclass
class SampledPRDC:
    """Mean scores over the draws, their spread, and the first draw (its points and per-point results)."""

    scores: dict[str, float]
    std: dict[str, float]
    per_draw: list[dict[str, float]]
    sample: dict[str, int]
    first: PRDCResult
    real_index: torch.Tensor
    fake_index: torch.Tensor


@torch.no_grad()
def sampled_prdc(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k: int,
    sample: int,
    repeats: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK,
) -> SampledPRDC:
    """PRDC of ``repeats`` seeded draws of ``sample`` points per set (a set no larger is used whole)."""
    g = torch.Generator().manual_seed(seed)
    draws: list[tuple[torch.Tensor, torch.Tensor, PRDCResult]] = []
    for _ in range(repeats):
        ri, fi = _draw(real.shape[0], sample, g), _draw(fake.shape[0], sample, g)
        dev = real.device
        draws.append((ri, fi, prdc(real[ri.to(dev)], fake[fi.to(fake.device)], k=k, chunk_size=chunk_size)))
    per_draw = [r.scores() for _, _, r in draws]
    keys = list(per_draw[0])
    values = {key: torch.tensor([d[key] for d in per_draw], dtype=torch.float64) for key in keys}
    return SampledPRDC(
        scores={key: v.mean().item() for key, v in values.items()},
        std={key: v.std(unbiased=True).item() if len(v) > 1 else 0.0 for key, v in values.items()},
        per_draw=per_draw,
        sample={"real": len(draws[0][0]), "synthetic": len(draws[0][1])},
        first=draws[0][2],
        real_index=draws[0][0],
        fake_index=draws[0][1],
    )


@dataclass
class Neighbours:
    """Per synthetic sample its nearest real image; per real image its nearest other real image."""

    fake_nn_distance: torch.Tensor
    fake_nn_index: torch.Tensor
    real_nn1: torch.Tensor
    info: dict[str, Any]


def _fill_misses(
    d: torch.Tensor, i: torch.Tensor, query: torch.Tensor, ref: torch.Tensor, own: bool, chunk: int
) -> int:
    """Exact search for the queries whose probed lists held no candidate (all of them empty lists)."""
    miss = torch.nonzero(i < 0).flatten()
    if miss.numel():
        ed, ei = exact_search(query[miss], ref, exclude=miss if own else None, chunk_size=chunk)
        d[miss], i[miss] = ed[:, 0], ei[:, 0]
    return int(miss.numel())


@torch.no_grad()
def ivf_neighbours(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    nlist: int | None,
    nprobe: int,
    iters: int,
    probe: int,
    threshold: float,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK,
) -> Neighbours:
    """Both neighbour searches of memorisation through one IVF index of ``real``, and their measured error."""
    n, m = real.shape[0], fake.shape[0]
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 3)

    index = build_ivf(real, nlist, iters=iters, seed=seed, chunk_size=chunk_size)
    seconds = {"build": lap()}
    fd, fi = (t[:, 0] for t in search(index, fake, k=1, nprobe=nprobe))
    own = torch.arange(n, device=real.device)
    rd, ri = (t[:, 0] for t in search(index, real, k=1, nprobe=nprobe, exclude=own))
    misses = _fill_misses(fd, fi, fake, real, False, chunk_size) + _fill_misses(
        rd, ri, real, real, True, chunk_size
    )
    seconds["search"] = lap()

    # The measured error: a seeded probe of samples and of real images, searched exactly.
    g = torch.Generator().manual_seed(seed + 1)
    pf = _draw(m, probe, g).to(fake.device)
    pr = _draw(n, probe, g).to(real.device)
    ed, ei = (t[:, 0] for t in exact_search(fake[pf], real, chunk_size=chunk_size))
    erd, eri = (t[:, 0] for t in exact_search(real[pr], real, exclude=pr, chunk_size=chunk_size))
    yard, _ = (t[:, 0] for t in exact_search(real[ei], real, exclude=ei, chunk_size=chunk_size))
    exact_suspect = ed / yard.clamp_min(1e-12) < threshold
    found_suspect = fd[pf] / rd[fi[pf]].clamp_min(1e-12) < threshold
    seconds["probe"] = lap()
    sizes = index.list_sizes()
    info = {
        "method": "ivf",
        "description": (
            "nearest neighbours by an inverted-file index (k-means coarse quantiser, exact distances in the "
            "probed lists; Jegou et al., TPAMI 2011), written in torch"
        ),
        "nlist": index.nlist,
        "nprobe": min(nprobe, index.nlist),
        "kmeans_iters": iters,
        "kmeans_train_points": index.train_size,
        "list_size": {"min": min(sizes), "max": max(sizes), "empty": sum(s == 0 for s in sizes)},
        "exact_fallbacks": misses,
        "probe": {"synthetic": int(pf.numel()), "real": int(pr.numel()), "seed": seed + 1},
        "recall_at_1": {
            "synthetic_to_real": recall_at_1(fd[pf], fi[pf], ed, ei),
            "real_to_real": recall_at_1(rd[pr], ri[pr], erd, eri),
        },
        "suspect_agreement": (exact_suspect == found_suspect).double().mean().item(),
        "suspects_on_probe": {"exact": int(exact_suspect.sum()), "found": int(found_suspect.sum())},
        "seconds": seconds,
    }
    return Neighbours(fd, fi, rd, info)

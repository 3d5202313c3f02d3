"""Chunked nearest-neighbour distances: the building block of PRDC and memorisation.

Distances are Euclidean (``torch.cdist``) and computed in ``chunk_size x chunk_size`` blocks, so memory is
bounded by one block whatever the set sizes: 50,000 x 50,000 comparisons never hold the full matrix.
float64 inputs stay float64 (exact references in tests); anything else is computed in float32. Blocks and
results live on the inputs' device (``audit --device cuda`` keeps its features there), so the same code runs
on the CPU and on an accelerator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DEFAULT_CHUNK = 4096


def _dtype(*xs: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


CHECK_ELEMENTS = 2**22  # values per finiteness check: isfinite makes an |x| copy and two masks of its input


def check_features(x: torch.Tensor, name: str) -> None:
    """A non-empty N x D matrix of finite values, checked in row blocks of about CHECK_ELEMENTS values:
    ``torch.isfinite`` of a whole 200,000 x 784 float32 matrix would hold ~0.9 GiB of temporaries."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty N x D feature matrix, got shape {tuple(x.shape)}")
    rows = max(1, CHECK_ELEMENTS // max(1, x.shape[1]))
    for i in range(0, x.shape[0], rows):
        if not torch.isfinite(x[i : i + rows]).all():
            raise ValueError(f"{name} holds non-finite values (nan or inf)")


def distance_blocks(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(row_start, col_start, D)`` with ``D[i, j] = ||a[row_start + i] - b[col_start + j]||``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    dtype = _dtype(a, b)
    for i in range(0, a.shape[0], chunk_size):
        rows = a[i : i + chunk_size].to(dtype)
        for j in range(0, b.shape[0], chunk_size):
            yield i, j, torch.cdist(rows, b[j : j + chunk_size].to(dtype))


def neighbour_distances(x: torch.Tensor, k: int, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``N x k``: distances of every row of ``x`` to its 1st, ..., k-th nearest *other* rows, ascending.

    Column ``k - 1`` is the radius of Naeem et al., 2020. A row's distance to itself (0) is the smallest and
    is dropped, as in their reference implementation (``k + 1`` smallest distances, then their maximum).
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    dtype = _dtype(x)
    best = torch.full((n, k + 1), float("inf"), dtype=dtype, device=x.device)
    for i, _, block in distance_blocks(x, x, chunk_size):
        rows = slice(i, i + block.shape[0])
        merged = torch.cat([best[rows], block], dim=1)
        best[rows] = merged.topk(min(k + 1, merged.shape[1]), dim=1, largest=False).values
    return best[:, 1:]


def nearest_neighbours(
    query: torch.Tensor, ref: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``query``: (distance to, index of) its nearest row of ``ref``; ties: lower index."""
    dtype = _dtype(query, ref)
    dist = torch.full((query.shape[0],), float("inf"), dtype=dtype, device=query.device)
    idx = torch.zeros(query.shape[0], dtype=torch.int64, device=query.device)
    for i, j, block in distance_blocks(query, ref, chunk_size):
        d, a = block.min(dim=1)
        rows = slice(i, i + block.shape[0])
        better = d < dist[rows]
        dist[rows] = torch.where(better, d, dist[rows])
        idx[rows] = torch.where(better, a + j, idx[rows])
    return dist, idx

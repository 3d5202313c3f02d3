"""Approximate nearest neighbours: an inverted-file (IVF) index written in torch, for audits above
``audit.exact_max`` where all-pairs distances are quadratic (1M x 1M: about 15 hours on one CPU thread).

The index is the coarse quantiser of Jegou, Douze and Schmid, "Product Quantization for Nearest Neighbor
Search" (TPAMI 2011), section IV, without the product quantiser: distances inside the probed lists are exact
(``torch.cdist``), so the only error is a true neighbour that lies in a list that was not probed. As in faiss
(Johnson, Douze, Jegou, "Billion-scale similarity search with GPUs", 2019):

1. **train**: k-means (Lloyd, ``iters`` rounds, seeded initial centroids drawn from the points) on a seeded
   sample of at most ``train_per_list * nlist`` reference points gives ``nlist`` centroids;
2. **add**: every reference point goes to the list of its nearest centroid (chunked, so memory is one block);
3. **search**: each query's ``nprobe`` nearest centroids name the lists it is compared with. The work runs
   list by list: all queries of a chunk that probe list ``l`` against the members of ``l``, one dense block,
   so the cost is ``queries x nprobe x N / nlist x D`` instead of ``queries x N x D``.

With ``nprobe = nlist`` every list is probed and the search is exact. :func:`recall_at_1` measures the error
of a search against the exact one on a seeded probe subset; the audit records it next to the scores.
The index holds the centroids and one permutation of the reference indices; the reference features are
never copied (each list's members are gathered when it is searched). Everything runs on the features'
device; the seeded draws use a CPU generator, so the lists do not depend on the device.

Example::

    >>> ref = torch.randn(5000, 16); index = build_ivf(ref, nlist=64, seed=0)
    >>> d, i = search(index, ref[:10] + 1e-3, k=1, nprobe=8)
    >>> i[:, 0].tolist() == list(range(10))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synthkit.metrics.neighbours import DEFAULT_CHUNK, check_features

TRAIN_PER_LIST = 32  # k-means sample per list (faiss warns below 39; 32 keeps training cheap at 1M)
QUERY_CHUNK = 16384  # queries whose probe lists are sorted together (memory: QUERY_CHUNK x nprobe ints)


def default_nlist(n: int) -> int:
    """``4 sqrt(n)`` lists (faiss' rule of thumb is 4 to 16 sqrt(n)), at most one per 8 points."""
    return max(1, min(n // 8, round(4 * math.sqrt(n))))


@dataclass
class IVFIndex:
    """Centroids, and the reference indices grouped by list: list ``l`` holds the reference rows
    ``order[offsets[l]:offsets[l + 1]]`` (the reference features themselves are not copied)."""

    ref: torch.Tensor
    centroids: torch.Tensor
    order: torch.Tensor
    offsets: list[int]
    train_size: int
    iters: int

    @property
    def nlist(self) -> int:
        return self.centroids.shape[0]

    def list_sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def _dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Index of the nearest centroid of every row of ``x`` (ties: the lower index)."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    c = centroids.to(_dtype(x))
    for i in range(0, x.shape[0], chunk_size):
        out[i : i + chunk_size] = torch.cdist(x[i : i + chunk_size].to(c.dtype), c).argmin(dim=1)
    return out


# one-hot rows per block of points in cluster_sums on CUDA: at most this many elements (points x clusters)
ONE_HOT_BLOCK = 1 << 24


def cluster_sums(
    x: torch.Tensor, label: torch.Tensor, k: int, *, one_hot: bool | None = None
) -> torch.Tensor:
    """k x D sums of the rows of ``x`` per ``label``.

    On CUDA ``index_add_`` adds with atomics, in an order that varies from run to run, so the centroids (and
    the lists built from them) would too; there the sums are products of one-hot blocks with ``x`` instead,
    accumulated block after block: deterministic. ``one_hot`` forces one way (None: one-hot on CUDA,
    ``index_add_`` elsewhere, where it is sequential already).
    """
    if one_hot is None:
        one_hot = x.device.type == "cuda"
    if not one_hot:
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, label, x)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    rows = max(1, ONE_HOT_BLOCK // k)
    for i in range(0, x.shape[0], rows):
        block = torch.nn.functional.one_hot(label[i : i + rows], k).to(x.dtype)
        sums += block.t() @ x[i : i + rows]
    return sums


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 10, seed: int = 0, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """``k`` centroids of the rows of ``x`` by Lloyd's algorithm from ``k`` seeded distinct rows.

    A centroid that loses all its points keeps its place (its list is then empty, which costs nothing).
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points, got k={k}")
    g = torch.Generator().manual_seed(seed)
    dtype = _dtype(x)
    centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].to(dtype).clone()
    for _ in range(iters):
        label = assign(x, centroids, chunk_size)
        sums = cluster_sums(x.to(dtype), label, k)
        counts = torch.bincount(label, minlength=k).to(dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


@torch.no_grad()
def build_ivf(
    ref: torch.Tensor,
    nlist: int | None = None,
    *,
    iters: int = 10,
    seed: int = 0,
    train_per_list: int = TRAIN_PER_LIST,
    chunk_size: int = DEFAULT_CHUNK,
) -> IVFIndex:
    """Train the coarse quantiser on a seeded sample of ``ref`` and put every row of ``ref`` in its list."""
    check_features(ref, "ref")
    n = ref.shape[0]
    nlist = default_nlist(n) if nlist is None else nlist
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in [1, {n}] for {n} reference points, got {nlist}")
    g = torch.Generator().manual_seed(seed)
    train_size = min(n, max(nlist, train_per_list * nlist))
    train = ref[torch.randperm(n, generator=g)[:train_size].sort().values.to(ref.device)]
    centroids = kmeans(train, nlist, iters=iters, seed=seed + 1, chunk_size=chunk_size)
    del train
    label = assign(ref, centroids, chunk_size)
    label_sorted, order = label.sort(stable=True)  # within a list, reference order
    counts = torch.bincount(label_sorted, minlength=nlist).cpu()
    offsets = [0, *torch.cumsum(counts, 0).tolist()]
    return IVFIndex(ref, centroids, order, offsets, train_size, iters)


@torch.no_grad()
def search(
    index: IVFIndex,
    query: torch.Tensor,
    *,
    k: int = 1,
    nprobe: int = 16,
    exclude: torch.Tensor | None = None,
    query_chunk: int = QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference rows of each query among its ``nprobe`` lists: (distances, indices),
    ``Q x k`` ascending; ``inf`` and ``-1`` where the probed lists hold fewer than ``k`` candidates.

    ``exclude``: per query, a reference index that may not be returned (the query's own index when the
    queries are the reference points themselves: the nearest *other* point).
    """
    check_features(query, "query")
    if query.shape[1] != index.ref.shape[1]:
        raise ValueError(f"feature dimensions differ: {query.shape[1]} vs {index.ref.shape[1]}")
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    nprobe = min(nprobe, index.nlist)
    dtype = _dtype(query)
    dev = query.device
    ref, order, offsets = index.ref, index.order, index.offsets
    out_d = torch.full((query.shape[0], k), float("inf"), dtype=dtype, device=dev)
    out_i = torch.full((query.shape[0], k), -1, dtype=torch.int64, device=dev)
    for start in range(0, query.shape[0], query_chunk):
        q = query[start : start + query_chunk].to(dtype)
        nq = q.shape[0]
        probes = torch.cdist(q, index.centroids.to(dtype)).topk(nprobe, dim=1, largest=False).indices
        lists, pos = probes.reshape(-1).sort(stable=True)
        owners = pos // nprobe  # the query (in this chunk) of each (list, query) entry, grouped by list
        bounds = [0, *torch.cumsum(torch.bincount(lists, minlength=index.nlist), 0).tolist()]
        best_d = torch.full((nq, k), float("inf"), dtype=dtype, device=dev)
        best_i = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
        own = exclude[start : start + nq].to(dev) if exclude is not None else None
        for lst in range(index.nlist):
            a, b = bounds[lst], bounds[lst + 1]
            lo, hi = offsets[lst], offsets[lst + 1]
            if a == b or lo == hi:
                continue
            qs = owners[a:b]  # distinct: a query probes a list once
            members = order[lo:hi]
            block = torch.cdist(q[qs], ref[members].to(dtype))
            if own is not None:
                block.masked_fill_(members[None, :] == own[qs][:, None], float("inf"))
            d, j = block.topk(min(k, block.shape[1]), dim=1, largest=False)
            merged_d = torch.cat([best_d[qs], d], dim=1)
            merged_i = torch.cat([best_i[qs], members[j]], dim=1)
            top = merged_d.topk(k, dim=1, largest=False)
            best_d[qs] = top.values
            best_i[qs] = merged_i.gather(1, top.indices)
        out_d[start : start + nq], out_i[start : start + nq] = best_d, best_i
    # a candidate masked out (itself) may still fill a slot with inf: it is no neighbour
    out_i = torch.where(torch.isfinite(out_d), out_i, torch.full_like(out_i, -1))
    return out_d, out_i


@torch.no_grad()
def exact_search(
    query: torch.Tensor,
    ref: torch.Tensor,
    *,
    k: int = 1,
    exclude: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`search` approximates, by all pairs: the ``k`` nearest rows of ``ref`` per query."""
    dtype = torch.float64 if torch.float64 in (query.dtype, ref.dtype) else torch.float32
    best_d = torch.full((query.shape[0], k), float("inf"), dtype=dtype, device=query.device)
    best_i = torch.full((query.shape[0], k), -1, dtype=torch.int64, device=query.device)
    for i in range(0, query.shape[0], chunk_size):
        q = query[i : i + chunk_size].to(dtype)
        rows = slice(i, i + q.shape[0])
        for j in range(0, ref.shape[0], chunk_size):
            block = torch.cdist(q, ref[j : j + chunk_size].to(dtype))
            cols = torch.arange(j, j + block.shape[1], device=query.device)
            if exclude is not None:
                block.masked_fill_(cols[None, :] == exclude[rows].to(query.device)[:, None], float("inf"))
            d, a = block.topk(min(k, block.shape[1]), dim=1, largest=False)
            merged_d = torch.cat([best_d[rows], d], dim=1)
            merged_i = torch.cat([best_i[rows], cols[a]], dim=1)
            top = merged_d.topk(k, dim=1, largest=False)
            best_d[rows], best_i[rows] = top.values, merged_i.gather(1, top.indices)
    return best_d, best_i


def recall_at_1(
    found_distance: torch.Tensor,
    found_index: torch.Tensor,
    exact_distance: torch.Tensor,
    exact_index: torch.Tensor,
    *,
    rtol: float = 1e-4,
) -> float:
    """Share of queries whose found neighbour is a true nearest neighbour.

    A hit is the exact neighbour's index, or another point at the exact nearest distance (ties and
    duplicates: either is a correct answer). Distances of the same pair computed in blocks of different
    shapes differ by float rounding (``cdist`` expands ``|a|^2 + |b|^2 - 2 a.b``), hence ``rtol``.
    """
    same = found_index == exact_index
    tie = found_distance <= exact_distance * (1 + rtol) + 1e-6
    return (same | tie).double().mean().item()

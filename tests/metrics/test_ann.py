"""The IVF index: exact when every list is probed, never nearer than the truth, recall measured honestly."""

from __future__ import annotations

import pytest
import torch

from synthkit.metrics.ann import build_ivf, default_nlist, exact_search, kmeans, recall_at_1, search
from synthkit.metrics.neighbours import nearest_neighbours, neighbour_distances


def _clustered(n: int, d: int, seed: int, centres: int = 12) -> torch.Tensor:
    """Points around a few centres, like image features (clusters are what an IVF index exploits)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g) * 4
    return c[torch.randint(0, centres, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_probing_every_list_is_the_exact_search() -> None:
    ref, query = _clustered(3000, 12, 0), _clustered(700, 12, 1)
    index = build_ivf(ref, nlist=40, seed=0)
    assert sorted(index.order.tolist()) == list(range(3000))  # every point in exactly one list
    d, i = search(index, query, k=3, nprobe=index.nlist)
    ed, ei = exact_search(query, ref, k=3)
    assert torch.equal(i, ei)
    assert torch.allclose(d, ed, rtol=1e-5, atol=1e-5)
    nd, ni = nearest_neighbours(query, ref)  # the audit's exact path agrees too
    assert torch.equal(i[:, 0], ni) and recall_at_1(d[:, 0], i[:, 0], nd, ni) == 1.0


def test_nearest_other_point_excludes_itself() -> None:
    ref = _clustered(1500, 8, 2)
    ref[7] = ref[3]  # an exact duplicate: its nearest other point is at distance 0
    index = build_ivf(ref, nlist=20, seed=1)
    own = torch.arange(1500)
    d, i = search(index, ref, k=1, nprobe=20, exclude=own)
    assert not (i[:, 0] == own).any()
    assert i[3, 0] == 7 and i[7, 0] == 3 and d[3, 0] == 0
    assert torch.allclose(d[:, 0], neighbour_distances(ref, 1)[:, 0], rtol=1e-5, atol=1e-5)


def test_fewer_probes_miss_some_but_never_find_nearer_and_recall_says_so() -> None:
    ref, query = _clustered(4000, 16, 3, centres=40), _clustered(1000, 16, 4, centres=40)
    index = build_ivf(ref, nlist=64, seed=0)
    ed, ei = exact_search(query, ref)
    recalls = []
    for nprobe in (1, 4, 64):
        d, i = search(index, query, nprobe=nprobe)
        assert (d[:, 0] >= ed[:, 0] - 1e-4).all()  # a found neighbour is a real point: never nearer
        recalls.append(recall_at_1(d[:, 0], i[:, 0], ed[:, 0], ei[:, 0]))
    assert recalls[0] < 1.0 and recalls == sorted(recalls) and recalls[-1] == 1.0


def test_the_index_is_seeded() -> None:
    ref = _clustered(2000, 6, 5)
    a, b = build_ivf(ref, nlist=30, seed=3), build_ivf(ref, nlist=30, seed=3)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.order, b.order)
    assert not torch.equal(build_ivf(ref, nlist=30, seed=4).centroids, a.centroids)


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    x = torch.cat([c + torch.randn(200, 2, generator=g) for c in centres])
    found = kmeans(x, 3, iters=20, seed=0)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 1.0


def test_bad_arguments_are_refused_and_defaults_are_sane() -> None:
    ref = torch.randn(100, 4)
    with pytest.raises(ValueError, match="nlist"):
        build_ivf(ref, nlist=101)
    with pytest.raises(ValueError, match="dimensions"):
        search(build_ivf(ref, nlist=4), torch.randn(3, 5))
    assert default_nlist(1_000_000) == 4000 and default_nlist(10) == 1


def test_one_hot_cluster_sums_equal_index_add(monkeypatch: pytest.MonkeyPatch) -> None:
    """k-means' sums on CUDA (one-hot products, deterministic) equal index_add_'s, in small blocks too."""
    from synthkit.metrics import ann

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    label = torch.randint(0, 11, (300,), generator=g)
    expected = torch.zeros(11, 5, dtype=torch.float64).index_add_(0, label, x)
    torch.testing.assert_close(ann.cluster_sums(x, label, 11, one_hot=True), expected)
    torch.testing.assert_close(ann.cluster_sums(x, label, 11, one_hot=False), expected)
    monkeypatch.setattr(ann, "ONE_HOT_BLOCK", 11 * 7)  # blocks of 7 points
    torch.testing.assert_close(ann.cluster_sums(x, label, 11, one_hot=True), expected)

"""MixedShardStream: proportions, disjoint slots across ranks and real DataLoader workers, determinism, the
skip policy over broken shards, mix specs and batch collation."""

from __future__ import annotations

import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

from synthkit.shards import ShardError, ShardSetWriter, iter_samples
from synthkit.shards.mix import MixedShardStream, MixSource, collate_images, parse_mix_spec

pytestmark = pytest.mark.filterwarnings("ignore:source .* has .* shards for:UserWarning")


def _write(out: Path, name: str, shards: int, per_shard: int = 50, total: int | None = None) -> Path:
    rng = np.random.default_rng(len(name))
    with ShardSetWriter(out, name, maxcount=per_shard, manifest_fields={"producer": "test"}) as writer:
        for i in range(shards * per_shard if total is None else total):
            image = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
            writer.write(f"{name}_{i:05d}", image, {"kind": "real", "producer": "test"}, cls=i % 3)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    return {
        "real": _write(root / "real", "real", 8),  # 400 samples, at least as many shards as 4 slots
        "syn": _write(root / "syn", "syn", 4),  # 200
        "few": _write(root / "few", "few", 2),  # 100, fewer shards than 4 slots: slots share shards
        # synthkit's own layout, full shards and a partial last one: 300/300/300/100
        "uneven": _write(root / "uneven", "uneven", 0, per_shard=300, total=1000),
        "uneven_syn": _write(root / "uneven_syn", "uneven_syn", 0, per_shard=70, total=250),  # 70 x 3 + 40
    }


def _sources(sets: dict[str, Path], **weights: float) -> list[MixSource]:
    return [MixSource(name, sets[name], w) for name, w in weights.items()]


def _keys(stream: MixedShardStream) -> list[tuple[str, str]]:
    return [(s["source"], s["__key__"]) for s in stream]


def test_realised_proportions_match_weights(sets):
    stream = MixedShardStream(_sources(sets, real=7.0, syn=3.0), seed=0, epoch_samples=20_000)
    np.testing.assert_allclose(stream.weights, [0.7, 0.3])
    counts = Counter(source for source, _ in _keys(stream))
    assert sum(counts.values()) == 20_000
    assert abs(counts["real"] / 20_000 - 0.7) < 0.01
    assert abs(counts["syn"] / 20_000 - 0.3) < 0.01


def _slot_tag(sample: dict) -> tuple[int, str, str]:
    """Runs in the worker: which worker produced which (source, key); drops the image before IPC."""
    return get_worker_info().id, sample["source"], sample["__key__"]


def _draw_by_slot(sets, weights, epoch_samples, world=2, workers=2, seed=0) -> dict[tuple[int, int], list]:
    by_slot: dict[tuple[int, int], list] = {}
    for rank in range(world):
        stream = MixedShardStream(
            _sources(sets, **weights), seed=seed, epoch_samples=epoch_samples, rank=rank, world=world,
            transform=_slot_tag,
        )  # fmt: skip
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        for worker, source, key in loader:
            by_slot.setdefault((rank, worker), []).append((source, key))
        assert sum(len(v) for (r, _), v in by_slot.items() if r == rank) == stream.samples_per_rank(workers)
    return by_slot


def test_two_ranks_two_workers_draw_disjoint_samples(sets):
    # 4 slots x 100: real needs <= 100 per slot and syn <= 50 per slot to stay within one pass, so no key
    # may legitimately repeat; with p=0.3 the syn draws per slot are far below 50.
    by_slot = _draw_by_slot(sets, {"real": 0.7, "syn": 0.3}, epoch_samples=403)
    assert sorted(by_slot) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # each rank's floor share (403 // 2 = 201), split by its two workers as evenly as whole batches
    # (here of one sample) allow: 101 + 100
    assert [len(by_slot[slot]) for slot in sorted(by_slot)] == [101, 100, 101, 100]
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for slot, keys in by_slot.items():
        assert len(set(keys)) == len(keys), slot
        for key in keys:
            assert seen.setdefault(key, slot) == slot, f"{key} drawn by slots {seen[key]} and {slot}"
    assert {source for keys in by_slot.values() for source, _ in keys} == {"real", "syn"}


@pytest.mark.parametrize("name", ["real", "few", "uneven"])
def test_one_pass_over_all_slots_covers_the_set_exactly_once(sets, name):
    total = {"real": 400, "few": 100, "uneven": 1000}[name]
    by_slot = _draw_by_slot(sets, {name: 1.0}, epoch_samples=total)
    drawn = [key for keys in by_slot.values() for _, key in keys]
    assert len(drawn) == total
    assert set(drawn) == {s["__key__"] for s in iter_samples(sets[name])}


def test_same_seed_and_epoch_repeat_other_seed_or_epoch_differ(sets):
    def run(seed: int, epoch: int, rank: int = 0) -> list[tuple[str, str]]:
        stream = MixedShardStream(
            _sources(sets, real=0.5, syn=0.5), seed=seed, epoch_samples=200, rank=rank, world=2
        )
        stream.set_epoch(epoch)
        return _keys(stream)

    # 100 per rank stays within one pass of each source per slot (syn: 2 shards, 100 samples), so the
    # two ranks must not share a key.
    first = run(0, 0)
    assert len(first) == 100
    assert first == run(0, 0)
    assert first != run(1, 0)
    assert first != run(0, 1)
    assert not set(first) & set(run(0, 0, rank=1))


def _break_png(shard: Path, key: str) -> None:
    """Overwrite the PNG signature of one member in place: same size, so the tar itself stays valid."""
    with tarfile.open(shard) as tar:
        offset = tar.getmember(f"{key}.png").offset_data
    with open(shard, "r+b") as f:
        f.seek(offset)
        f.write(b"NOTAPNG!")


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    out = _write(tmp_path / "dmg", "dmg", 3, per_shard=10)
    truncated, broken_png = out / "dmg-000001.tar", out / "dmg-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    _break_png(broken_png, "dmg_00023")
    return out, truncated, broken_png, "dmg_00023"


def _bare_copies(damaged_set: Path, tmp_path: Path) -> list[Path]:
    """The damaged set's tars in a directory without a manifest: nothing vouches for their bytes, so the
    reader checks them sample by sample (structure, decoding, schema) instead of refusing them whole."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for shard in sorted(damaged_set.glob("*.tar")):
        shutil.copy(shard, bare / shard.name)
    return sorted(bare.glob("*.tar"))


def test_iter_samples_skip_records_and_yields_only_good_samples(damaged, tmp_path):
    out, truncated, broken_png, bad_key = damaged
    # Bare tars: a truncated shard gives the complete samples before the cut, a bad image only itself.
    paths = _bare_copies(out, tmp_path)
    truncated, broken_png = paths[1], paths[2]
    errors: list[tuple[str, str]] = []
    got = [s["__key__"] for s in iter_samples(paths, on_error="skip", errors=errors)]
    where = dict(errors)
    assert set(where) == {str(truncated), f"{broken_png}:{bad_key}"}
    assert "truncated" in where[str(truncated)]
    assert "cannot decode image" in where[f"{broken_png}:{bad_key}"]
    from_truncated = [k for k in got if 10 <= int(k.split("_")[1]) < 20]
    assert from_truncated == [f"dmg_{i:05d}" for i in range(10, 10 + len(from_truncated))]  # a prefix
    assert len(from_truncated) < 10
    assert got == [f"dmg_{i:05d}" for i in range(10)] + from_truncated + [
        f"dmg_{i:05d}" for i in range(20, 30) if i != 23
    ]
    with pytest.raises(ShardError, match="dmg-000001.tar"):
        list(iter_samples(paths))
    with pytest.warns(UserWarning) as record:  # without a collector a skip is still visible
        assert len(list(iter_samples(paths, on_error="skip"))) == len(got)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any("truncated" in m for m in messages) and any(bad_key in m for m in messages)
    with pytest.raises(ValueError, match="on_error"):
        list(iter_samples(paths, on_error="ignore"))

    # The published set: its manifest vouches for each shard's bytes, and both damaged shards fail their
    # sha256, so neither gives out a single sample; each skip says how many samples it cost.
    errors = []
    got = [s["__key__"] for s in iter_samples(out, on_error="skip", errors=errors)]
    assert got == [f"dmg_{i:05d}" for i in range(10)]
    where = dict(errors)
    assert set(where) == {str(out / "dmg-000001.tar"), str(out / "dmg-000002.tar")}
    assert "truncated" in where[str(out / "dmg-000001.tar")]
    assert "sha256" in where[str(out / "dmg-000002.tar")]
    assert all("(10 samples not used)" in reason for reason in where.values())


def test_stream_skip_counts_broken_items_and_default_raises(damaged, tmp_path):
    out, truncated, broken_png, bad_key = damaged
    good = {s["__key__"] for s in iter_samples(out, on_error="skip", errors=[])}
    stream = MixedShardStream([MixSource("d", out, 1.0)], seed=0, epoch_samples=60, on_error="skip")
    with pytest.warns(UserWarning, match="skipped"):
        keys = [key for _, key in _keys(stream)]
    assert len(keys) == 60 and set(keys) <= good and bad_key not in keys
    assert set(stream.skipped) == {str(truncated), str(broken_png)}  # both fail their sha256: whole shards
    with pytest.raises(ShardError, match=r"dmg-00000[12]\.tar"):
        _keys(MixedShardStream([MixSource("d", out, 1.0)], seed=0, epoch_samples=60))


def test_stream_refuses_unpublished_set_and_bad_arguments(sets, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest"):
        MixedShardStream([MixSource("e", tmp_path / "empty", 1.0)], seed=0, epoch_samples=10)
    src = _sources(sets, real=1.0)
    for kwargs, match in [
        ({"rank": 2, "world": 2}, "rank"),
        ({"epoch_samples": 0}, "epoch_samples"),
        ({"on_error": "ignore"}, "on_error"),
    ]:
        with pytest.raises(ValueError, match=match):
            MixedShardStream(src, **{"seed": 0, "epoch_samples": 10, **kwargs})
    with pytest.raises(ValueError, match="unique"):
        MixedShardStream(src + src, seed=0, epoch_samples=10)
    with pytest.raises(ValueError, match="no samples"):
        list(MixedShardStream(src, seed=0, epoch_samples=1, world=2))


def test_parse_mix_spec(sets, tmp_path):
    spec = parse_mix_spec(f"real={sets['real']}:0.7")
    assert spec == MixSource("real", sets["real"], 0.7)
    missing = tmp_path / "nope"
    for bad, match in [
        ("real", "NAME=DIR:WEIGHT"),
        (f"real={sets['real']}", "NAME=DIR:WEIGHT"),
        ("real=:0.5", "NAME=DIR:WEIGHT"),
        (f"=x{sets['real']}:0.5", "source name"),
        (f"a b={sets['real']}:0.5", "source name"),
        (f"real={sets['real']}:abc", "not a number"),
        (f"real={sets['real']}:0", "above 0"),
        (f"real={sets['real']}:-1", "above 0"),
        (f"real={sets['real']}:nan", "above 0"),
        (f"real={missing}:0.5", "not a directory"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_mix_spec(bad)


def test_collate_images_shapes_and_mismatch():
    def sample(key: str, shape: tuple[int, ...]) -> dict:
        return {"__key__": key, "image": np.full(shape, 7, np.uint8), "meta": {"k": key}}

    images, metas = collate_images([sample("a", (4, 5, 3)), sample("b", (4, 5, 3))])
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 4, 5) and images.is_contiguous()
    assert metas == [{"k": "a"}, {"k": "b"}]
    with pytest.raises(ValueError, match=r"'a' is \(4, 5, 3\).*'c' is \(4, 5, 1\)"):
        collate_images([sample("a", (4, 5, 3)), sample("c", (4, 5, 1))])


def test_collate_through_a_dataloader(sets):
    stream = MixedShardStream(_sources(sets, real=1.0, syn=1.0), seed=0, epoch_samples=70)
    batches = list(DataLoader(stream, batch_size=32, collate_fn=collate_images))
    assert [b[0].shape for b in batches] == [(32, 1, 4, 4), (32, 1, 4, 4), (6, 1, 4, 4)]
    assert all(meta["kind"] == "real" for _, metas in batches for meta in metas)


def test_unequal_shards_two_ranks_two_workers_read_every_sample_exactly_once(sets):
    """The layout that used to repeat 150 samples and skip 150 (slots were dealt whole shards of 300/300/
    300/100)."""
    by_slot = _draw_by_slot(sets, {"uneven": 1.0}, epoch_samples=1000)
    assert sorted(by_slot) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(keys) == 250 for keys in by_slot.values())
    drawn = Counter(key for keys in by_slot.values() for _, key in keys)
    assert set(drawn.values()) == {1}
    assert set(drawn) == {s["__key__"] for s in iter_samples(sets["uneven"])}
    # two epochs' worth in one epoch: the stream wraps into a second pass, and every sample is read twice
    twice = Counter(k for keys in _draw_by_slot(sets, {"uneven": 1.0}, 2000).values() for _, k in keys)
    assert set(twice.values()) == {2} and len(twice) == 1000


def test_a_mix_over_unequal_shards_reads_no_sample_twice_and_its_epoch_ignores_the_slot_count(sets):
    weights = {"uneven": 0.6, "uneven_syn": 0.4}  # ~480 of 1000 and ~320 of 250: syn wraps, uneven must not
    by_slot = _draw_by_slot(sets, weights, epoch_samples=800)
    drawn = Counter(key for keys in by_slot.values() for key in keys)
    uneven = {k: n for k, n in drawn.items() if k[0] == "uneven"}
    syn = {k: n for k, n in drawn.items() if k[0] == "uneven_syn"}
    assert set(uneven.values()) == {1}
    # the source that the epoch asks more of than it holds is read in full before any sample repeats
    assert len(syn) == 250 and set(syn.values()) <= {1, 2}
    # the same samples, in the same global order, on one process without workers
    one = MixedShardStream(_sources(sets, **weights), seed=0, epoch_samples=800)
    assert Counter(_keys(one)) == drawn
    slots = [by_slot[(r, w)] for r in range(2) for w in range(2)]
    assert [k for keys in slots for k in keys] == _keys(one)

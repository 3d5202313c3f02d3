"""Real batches: in-memory ones (unchanged on the CPU, on the device when a GPU holds them) and a mix streamed
by persistent DataLoader workers, with exactly ``len(batches)`` full batches at any number of workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthkit.config import DataConfig, MixConfig
from synthkit.data.batches import EpochBatches, MemoryBatches, MixBatches, check_mix, sample_images
from synthkit.data.convert import convert_source

pytestmark = [
    pytest.mark.filterwarnings("ignore:source .* has .* shards for:UserWarning"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create .* worker processes:UserWarning"),
]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("batches")
    a, b = root / "a", root / "b"
    convert_source(DataConfig(name="digits", size=8, subset=160), "train", a, maxcount=16)  # 10 shards
    convert_source(DataConfig(name="digits", size=8, subset=96, subset_seed=1), "train", b, maxcount=20)
    return a, b


def _mix(sets: tuple[Path, Path], workers: int, epoch_samples: int = 250) -> MixConfig:
    a, b = sets
    return MixConfig(sources=(f"a={a}:0.6", f"b={b}:0.4"), epoch_samples=epoch_samples, num_workers=workers)


def _epoch(batches: MixBatches, epoch: int) -> list[list[str]]:
    out = []
    for names, images in batches.epoch(epoch):
        assert images.dtype == torch.uint8 and images.shape == (len(names), 1, 8, 8)
        out.append(names)
    return out


def test_a_mix_yields_len_full_batches_at_any_number_of_workers(sets) -> None:
    """250 samples in batches of 32 on one process: 7 batches (224 samples). Split per worker as before
    (125 each, each worker batching its own share), two workers made only 6, and the epoch means of a run
    were divided by 7."""
    runs = {}
    for workers in (0, 1, 2, 3):
        batches = MixBatches(_mix(sets, workers), 32, rank=0, world=1, seed=0)
        assert len(batches) == 7
        runs[workers] = _epoch(batches, 0)
        assert len(runs[workers]) == len(batches)
        assert all(len(names) == 32 for names in runs[workers])
        assert sum(batches.drawn.values()) == 7 * 32 and set(batches.drawn) == {"a", "b"}
        batches.close()
    # the same samples at any number of workers; with one worker, in the same order as without
    assert runs[1] == runs[0]
    for workers in (2, 3):
        assert sorted(sum(runs[workers], [])) == sorted(sum(runs[0], []))
    # two workers hand out their runs of batches in turn: worker 0's first, worker 1's first (batch 4), ...
    assert runs[2][:2] == [runs[0][0], runs[0][4]]


def test_two_processes_two_workers_each_get_len_disjoint_batches(sets) -> None:
    keys = []
    for rank in range(2):
        # 192 samples: ~115 of a's 160 and ~77 of b's 96, so no sample is drawn twice in the epoch
        batches = MixBatches(_mix(sets, 2, epoch_samples=192), 16, rank=rank, world=2, seed=3)
        assert len(batches) == 192 // 2 // 16
        epoch = _epoch(batches, 5)
        assert len(epoch) == len(batches)
        keys.append({k for names in epoch for k in names})
        batches.close()
    assert len(keys[0]) == len(keys[1]) == 96 and not keys[0] & keys[1]


def test_persistent_workers_read_each_new_epoch(sets) -> None:
    """The workers start once and follow set_epoch: epoch 1 differs from epoch 0, epoch 0 read again repeats
    it, and a bounded sample (k-means, reference batches) read in between changes neither."""
    batches = MixBatches(_mix(sets, 2), 32, rank=0, world=1, seed=0)
    first = _epoch(batches, 0)
    workers = [w.pid for w in batches._loader._iterator._workers]
    second = _epoch(batches, 1)
    sample = sample_images(batches, 40, 3_000_000)
    assert sample.shape == (40, 1, 8, 8)
    again = _epoch(batches, 0)
    assert [w.pid for w in batches._loader._iterator._workers] == workers  # the same processes
    assert second != first and again == first
    batches.close()


def test_check_mix_reads_kinds_shapes_and_the_default_epoch(sets) -> None:
    a, b = sets
    info = check_mix(MixConfig(sources=(f"a={a}:0.5", f"b={b}:0.5")))
    assert [(s.name, s.total, s.kind, s.shape) for s in info.sets] == [
        ("a", 160, "real", (8, 8, 1)),
        ("b", 96, "real", (8, 8, 1)),
    ]
    assert (info.size, info.channels) == (8, 1)
    assert info.epoch_samples == 256 and "real sets" in info.epoch_rule  # both sets are real
    assert check_mix(MixConfig(sources=(f"a={a}:1.0",), epoch_samples=99)).epoch_samples == 99


def test_memory_batches_on_the_cpu_are_the_plain_slices() -> None:
    """On the CPU nothing moves: the batches are the images at the epoch's indices, not pinned, and the
    same as before the device path existed."""
    images = torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8)
    batches = MemoryBatches(images, 8, rank=1, world=2, seed=5, device=torch.device("cpu"))
    assert batches.resident is None and not batches.pin
    plain = list(EpochBatches(100, 8, rank=1, world=2, seed=5).epoch(2))
    got = list(batches.epoch(2))
    assert len(got) == len(plain) == 100 // 16
    for (idx, x), want in zip(got, plain, strict=True):
        assert torch.equal(idx, want) and torch.equal(x, images[want]) and not x.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_batches_live_on_the_gpu_when_they_fit() -> None:
    images = torch.randint(0, 256, (1000, 1, 8, 8), dtype=torch.uint8)
    device = torch.device("cuda")
    batches = MemoryBatches(images, 16, rank=0, world=1, seed=0, device=device)
    assert batches.resident is not None and batches.resident.device.type == "cuda"
    for (idx, x), want in zip(batches.epoch(1), EpochBatches(1000, 16, seed=0).epoch(1), strict=True):
        assert idx.device.type == "cpu" and torch.equal(idx, want)
        assert x.device.type == "cuda" and torch.equal(x.cpu(), images[want])

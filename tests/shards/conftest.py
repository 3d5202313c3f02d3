"""Tiny deterministic samples and a set-writing helper shared by the shard tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthkit.shards import ShardSetWriter

Sample = tuple[str, np.ndarray, dict[str, Any], int | None]


def _samples() -> list[Sample]:
    """Five samples covering every accepted image layout, with and without a label."""
    rng = np.random.default_rng(0)
    shapes = [(4, 5, 3), (4, 5), (3, 6, 1), (4, 5, 3), (2, 2, 3)]
    samples: list[Sample] = []
    for i, shape in enumerate(shapes):
        meta = {
            "kind": "pair_a" if i % 2 else "hard",
            "producer": "test",
            "generator_step": 10 * i,
            "seed": i,
            "condition": i % 2,
            "condition_source": "kmeans",
            "condition_k": 2,
            "hardness": 0.25 * i,
            "note": "ünïcode",
        }
        samples.append((f"s{i:03d}", rng.integers(0, 256, shape, dtype=np.uint8), meta, i if i % 2 else None))
    return samples


@pytest.fixture
def samples() -> list[Sample]:
    return _samples()


@pytest.fixture
def write_set(tmp_path: Path, samples: list[Sample]) -> Callable[..., Path]:
    """Return ``write(subdir="set", maxcount=2, items=samples, name="hard") -> set directory``."""

    def write(
        subdir: str = "set", *, maxcount: int = 2, items: list[Sample] | None = None, name: str = "hard"
    ) -> Path:
        out = tmp_path / subdir
        fields = {"producer": "test", "config": {"a": 1}, "seed": 0}
        with ShardSetWriter(out, name, maxcount=maxcount, manifest_fields=fields) as writer:
            for key, image, meta, cls in samples if items is None else items:
                writer.write(key, image, meta, cls)
        return out

    return write


@pytest.fixture(scope="module")
def moto_url():
    """A moto S3 server on 127.0.0.1 for the module's tests (skipped without the s3 extra)."""
    pytest.importorskip("s3fs", reason="the S3 tests need the s3 extra: pip install -e '.[s3]'")
    moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server", reason="needs moto[server]")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()

"""Numbers that matter in float32 whatever the autocast: a bf16 step and a float32 step agree on the loss and
every sample's hardness, and under bf16 two gloo processes agree with one.

One shipped ``EncoderStep`` (SimCLR over real images, an HSG chunk through the gradient reversal and a
generated pair) on a fixed batch; the encoder in eval mode and the views the identity, so that only the
precision and the process count differ (as ``tests/objectives/test_global_batch.py``). An Accelerator's mixed
precision is fixed per process, so each bf16 run is spawned: one process, then two on gloo holding half the
batch each; the float32 reference runs here. CPU autocast bf16 stands in for a GPU's.

Tolerances: bf16 vs float32, 1e-3 on every per-view loss (the encoder's own bf16 rounding; measured 3e-5 on
this batch; with the loss in bf16, as before, it was 1e-2); 2 vs 1 process under bf16, 1e-5 (float32 rounding
of the gathered rows).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from synthkit.config import load_pipeline
from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.generators.cgan import Generator
from synthkit.objectives.base import build_objective
from synthkit.producers.base import Chunk, Contribution
from synthkit.producers.hard_samples import grad_reverse
from synthkit.training.steps import EncoderStep

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "tiny.yaml"
N = 32  # real images; N/2 hard, N/4 pairs
SIZES = [N, N // 2, N // 4, N // 4]  # the step's chunks: real, hard, pair a, pair b


def _step(precision: str, rank: int, world: int, objective: str) -> dict[str, torch.Tensor]:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, mixed_precision=precision)
    extra = ["--objective.queue_size=24"] if objective == "moco" else []
    cfg = load_pipeline(
        TINY,
        [
            f"--objective.name={objective}",
            *extra,
            "--views.crop_scale=[1.0, 1.0]",
            "--views.flip_p=0.0",
            "--views.jitter_p=0.0",
            "--objective.temperature=0.2",
        ],
    )
    torch.manual_seed(0)
    encoder = Encoder(cfg.encoder, 1).eval()
    generator = Generator(cfg.generator.z_dim, 1, 16, 0, base=8).eval()
    obj = build_objective(cfg.objective, encoder, cfg.encoder.proj_dim, seed=0)
    for module in obj.modules().values():
        module.eval()
    g = torch.Generator().manual_seed(1)
    batch = {
        "real": torch.rand(N, 1, 16, 16, generator=g),
        "z": torch.randn(N // 2, cfg.generator.z_dim, generator=g),
        "pair_a": torch.rand(N // 4, 1, 16, 16, generator=g),
        "pair_b": torch.rand(N // 4, 1, 16, 16, generator=g),
    }
    batch = {k: v.chunk(world)[rank] for k, v in batch.items()}
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.1)
    encoder, opt, generator, opt_g = acc.prepare(encoder, opt, generator, opt_g)
    step = EncoderStep(acc, encoder, Views(cfg.views, 1, 16), opt, obj)
    captured = {}
    per_view_of = obj.per_view

    def per_view(*args, **kwargs):
        out = per_view_of(*args, **kwargs)
        captured["per_view"] = out.detach().clone()
        return out

    obj.per_view = per_view
    chunks = [
        Chunk(grad_reverse(generator(batch["z"]), 1.0), "syn"),
        Chunk(batch["pair_a"], "pair", partner=batch["pair_b"]),
    ]
    rec = step(batch["real"], Contribution(chunks, None, [opt_g], {}))
    return {"per_view": captured["per_view"], "loss_cl": rec["loss_cl"].detach().reshape(1)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    if world > 1:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
    os.environ["ACCELERATE_USE_CPU"] = "1"
    torch.set_num_threads(1)
    for objective in ("simclr", "moco"):
        torch.save(_step("bf16", rank, world, objective), Path(out) / f"{objective}-{world}-rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global(shares: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Per-view losses of the whole batch in the one-process row order, from each process's rows."""
    world = len(shares)
    local = [s // world for s in SIZES]
    parts = []
    for view in range(2):
        for i, size in enumerate(local):
            start = view * sum(local) + sum(local[:i])
            parts += [(i, view, r, s["per_view"][start : start + size]) for r, s in enumerate(shares)]
    ordered = sorted(parts, key=lambda p: (p[1], p[0], p[2]))  # view, chunk, rank
    return torch.cat([p[3] for p in ordered])


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("precision")
    threads = torch.get_num_threads()
    for world in (1, 2):
        mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world)
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("objective", ["simclr", "moco"])
def test_bf16_and_float32_agree_and_so_do_one_and_two_processes(objective: str, bf16_runs: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fp32 = _step("no", 0, 1, objective)
    torch.set_num_threads(threads)
    one = torch.load(bf16_runs / f"{objective}-1-rank0.pt", weights_only=True)
    two = [torch.load(bf16_runs / f"{objective}-2-rank{r}.pt", weights_only=True) for r in range(2)]
    # the step's numbers are float32 under bf16 autocast
    assert one["per_view"].dtype == torch.float32 and one["loss_cl"].dtype == torch.float32
    m = N + N // 2 + N // 2
    hardness = lambda pv: 0.5 * (pv[:m] + pv[m:])  # noqa: E731 - the step's definition, per image
    torch.testing.assert_close(one["per_view"], fp32["per_view"], rtol=0, atol=1e-3)
    torch.testing.assert_close(hardness(one["per_view"]), hardness(fp32["per_view"]), rtol=0, atol=1e-3)
    torch.testing.assert_close(one["loss_cl"], fp32["loss_cl"], rtol=0, atol=1e-3)
    both = _global(two)
    torch.testing.assert_close(both, one["per_view"], rtol=0, atol=1e-5)
    torch.testing.assert_close(hardness(both), hardness(one["per_view"]), rtol=0, atol=1e-5)
    mean_two = (two[0]["loss_cl"] + two[1]["loss_cl"]) / 2
    torch.testing.assert_close(mean_two, one["loss_cl"], rtol=0, atol=1e-5)

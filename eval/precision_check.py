"""Loss and hardness of one encoder step under bf16 autocast against float32, at 1 and 2 processes.

One shipped ``EncoderStep`` (SimCLR, real images plus an HSG chunk and a generated pair) on a fixed global
batch, the encoder in eval mode and the views the identity (as ``tests/objectives/test_global_batch.py``), so
that only the precision and the process count differ. Three runs, each in processes of its own (an
Accelerator's mixed precision is fixed per process): float32 on one process, bf16 autocast on one process,
bf16 autocast on two gloo processes holding half the batch each. CPU autocast bf16 stands in for a GPU's.

    python eval/precision_check.py [--batch 64]

Prints the largest differences of the per-view losses, the per-sample hardness and the step's mean loss
between the runs, and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

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

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.yaml"


def _batch(n: int, z_dim: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "real": torch.rand(n, 1, 16, 16, generator=g),
        "z": torch.randn(n // 2, z_dim, generator=g),
        "pair_a": torch.rand(n // 4, 1, 16, 16, generator=g),
        "pair_b": torch.rand(n // 4, 1, 16, 16, generator=g),
    }


def _worker(rank: int, world: int, port: int, precision: str, n: int, out: str) -> None:
    if world > 1:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
    os.environ["ACCELERATE_USE_CPU"] = "1"
    torch.set_num_threads(1)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, mixed_precision=precision)
    cfg = load_pipeline(TINY, ["--views.crop_scale=[1.0, 1.0]", "--views.flip_p=0.0", "--views.jitter_p=0.0"])
    torch.manual_seed(0)
    encoder = Encoder(cfg.encoder, 1).eval()
    generator = Generator(cfg.generator.z_dim, 1, 16, 0, base=8).eval()
    obj = build_objective(cfg.objective, encoder, cfg.encoder.proj_dim, seed=0)
    views = Views(cfg.views, 1, 16)
    batch = {k: v.chunk(world)[rank] for k, v in _batch(n, cfg.generator.z_dim).items()}
    opt = torch.optim.SGD(encoder.parameters(), lr=0.0)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.0)
    encoder, opt, generator, opt_g = acc.prepare(encoder, opt, generator, opt_g)
    step = EncoderStep(acc, encoder, views, opt, obj)
    captured = {}
    per_view_of = obj.per_view

    def per_view(*args, **kwargs):  # keep the step's per-view losses
        out = per_view_of(*args, **kwargs)
        captured["per_view"] = out.detach().float().clone()
        return out

    obj.per_view = per_view
    with acc.autocast():
        hard = generator(batch["z"])
    chunks = [Chunk(grad_reverse(hard, 1.0), "syn"), Chunk(batch["pair_a"], "pair", partner=batch["pair_b"])]
    rec = step(batch["real"], Contribution(chunks, None, [opt_g], {}))
    torch.save(
        {"per_view": captured["per_view"], "loss_cl": torch.tensor(float(rec["loss_cl"]))},
        Path(out) / f"{precision}-{world}-rank{rank}.pt",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _by_image(per_view: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Per chunk: the 2 x n per-view losses (view 1 row, view 2 row)."""
    m = per_view.shape[0] // 2
    out, offset = [], 0
    for size in sizes:
        out.append(torch.stack([per_view[offset : offset + size], per_view[m + offset : m + offset + size]]))
        offset += size
    return out


def run(n: int) -> dict:
    out = tempfile.mkdtemp()
    for precision, world in (("no", 1), ("bf16", 1), ("bf16", 2)):
        mp.spawn(_worker, args=(world, _free_port(), precision, n, out), nprocs=world)
    sizes = [n, n // 2, n // 4, n // 4]

    def load(precision: str, world: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        shares = [torch.load(Path(out) / f"{precision}-{world}-rank{r}.pt") for r in range(world)]
        local = [s // world for s in sizes]
        chunks = [torch.cat([_by_image(s["per_view"], local)[i] for s in shares], dim=1) for i in range(4)]
        per_view = torch.cat([c.flatten() for c in chunks])
        hardness = torch.cat([c.mean(0) for c in chunks])
        return per_view, hardness, sum(float(s["loss_cl"]) for s in shares) / world

    fp32, bf16, bf16_2 = load("no", 1), load("bf16", 1), load("bf16", 2)

    def diff(a, b) -> dict:
        return {
            "per_view_max_abs": float((a[0] - b[0]).abs().max()),
            "hardness_max_abs": float((a[1] - b[1]).abs().max()),
            "hardness_max_rel": float(((a[1] - b[1]).abs() / b[1].abs()).max()),
            "loss_abs": abs(a[2] - b[2]),
        }

    return {
        "batch": n,
        "loss_fp32": fp32[2],
        "bf16_vs_fp32": diff(bf16, fp32),
        "bf16_2proc_vs_1proc": diff(bf16_2, bf16),
        "bf16_2proc_vs_fp32": diff(bf16_2, fp32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    res = run(args.batch)
    for k in ("bf16_vs_fp32", "bf16_2proc_vs_1proc", "bf16_2proc_vs_fp32"):
        d = res[k]
        print(
            f"{k:20s} per-view loss max |diff| {d['per_view_max_abs']:.2e}, hardness max |diff| "
            f"{d['hardness_max_abs']:.2e} (rel {d['hardness_max_rel']:.2e}), "
            f"mean loss |diff| {d['loss_abs']:.2e}"
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()

"""Sampling throughput of the diffusion producers on this machine: images/s for DDIM at the run's steps.

Three figures, same batch and steps: plain conditional DDIM (``ddim_sample``), DDIM with encoder guidance
(HSG: one extra encoder forward/backward per step, no UNet backward), and branched pairs (HPG, noise mode
at the run's final ``t_split``: the branched steps run on a doubled batch). Counted in output images.

    python eval/bench_diffusion_sampling.py --run RUN_DIR [--batch-size 64] [--steps S] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusion_common import load_run

from synthkit.samplers.diffusion_sampling import Guidance, ddim_pairs, ddim_sample


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's diffusion.ddim_steps)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    art, producer, scorer = load_run(args.run)
    d = art.cfg.generator
    steps = args.steps or d.ddim_steps
    b = args.batch_size
    g = torch.Generator().manual_seed(0)
    labels = producer.draw_conditions(b, g)
    kw = {"steps": steps, "eta": d.ddim_eta, "n": b}
    u, sc = producer.unet, producer.scheduler_config
    guidance = Guidance(scorer, d.guidance_scale, d.guidance_schedule)
    with torch.no_grad():
        plain = _time(
            lambda: ddim_sample(u, sc, labels, generator=torch.Generator().manual_seed(1), **kw), args.repeats
        )
        guided = _time(
            lambda: ddim_sample(
                u, sc, labels, generator=torch.Generator().manual_seed(1), guidance=guidance, **kw
            ),
            args.repeats,
        )
        pairs = _time(
            lambda: ddim_pairs(
                u, sc, labels, t_split=d.t_split_end, generator=torch.Generator().manual_seed(1), **kw
            ),
            args.repeats,
        )
    res = {
        "run": str(args.run),
        "image": list(
            u.config.sample_size if isinstance(u.config.sample_size, list) else [u.config.sample_size] * 2
        ),
        "unet_params": sum(p.numel() for p in u.parameters()),
        "block_out_channels": list(u.config.block_out_channels),
        "ddim_steps": steps,
        "batch_size": b,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "plain_images_per_s": round(b / plain, 2),
        "guided_images_per_s": round(b / guided, 2),
        "pair_images_per_s": round(2 * b / pairs, 2),
        "t_split": d.t_split_end,
    }
    print(
        f"DDIM {steps} steps, batch {b}, {res['image'][0]} px, UNet {res['unet_params']:,} params, "
        f"{res['threads']} CPU threads"
    )
    print(f"  plain   {res['plain_images_per_s']:8.2f} images/s")
    print(f"  guided  {res['guided_images_per_s']:8.2f} images/s (HSG, encoder guidance every step)")
    print(f"  pairs   {res['pair_images_per_s']:8.2f} images/s (HPG, 2 per pair, t_split {d.t_split_end})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

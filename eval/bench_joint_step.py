"""Wall time of the views, a plain SimCLR step, a joint HSG step and a joint HSG+HPG step, same real batch.

docs/method.md ("HSG with a conditional GAN"): sharing one encoder forward/backward between the encoder's
descent and G's ascent (gradient reversal) keeps a joint HSG step close to a plain step on the enlarged batch
(real + synthetic images; goal: <= 1.10x). Every step is the loop's own (synthkit.training.steps, the cGAN
producer's ``step_terms`` and ``after_step``); they are timed interleaved, after warm-up, and the medians are
reported. The views are timed alone on a batch of ``--views-batch`` images (512 by default).

    python eval/bench_joint_step.py [--pipeline pipelines/fashion-mnist-hsg.yaml] [--batch 256] [--repeats 30]

Use one thread (``OMP_NUM_THREADS=1``) on a shared CPU; the result line says how many were used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from synthkit.config import PipelineConfig, load_pipeline
from synthkit.data.sources import load_source
from synthkit.data.views import Views, to_float
from synthkit.encoders.model import Encoder
from synthkit.objectives.base import build_objective
from synthkit.producers.base import TrainContext
from synthkit.producers.cgan import CGanProducer
from synthkit.producers.positive_pairs import AdaptiveTarget
from synthkit.training.steps import EncoderStep


def measure(
    cfg: PipelineConfig,
    images: torch.Tensor,
    batch: int,
    repeats: int,
    warmup: int,
    views_batch: int = 512,
    fused: bool = True,
) -> dict:
    """Median wall times of the views, a plain step, a joint HSG step, a joint HSG+HPG step and a plain
    step on the enlarged batch, on the accelerator when there is one (``train.mixed_precision`` applies)."""
    channels, size = images.shape[1], images.shape[-1]
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision)
    x_real = to_float(images[:batch]).to(acc.device)

    def build(hsg: bool, hpg: bool = False) -> tuple[EncoderStep, CGanProducer | None]:
        torch.manual_seed(0)
        enc = Encoder(cfg.encoder, channels)
        if cfg.train.channels_last:
            enc = enc.to(memory_format=torch.channels_last)
        objective = build_objective(cfg.objective, enc, cfg.encoder.proj_dim, seed=0).to(acc.device)
        opt = torch.optim.Adam(enc.parameters(), lr=cfg.train.lr, fused=fused)  # as the loop builds it
        views = Views(cfg.views, channels, size).to(acc.device)
        enc, opt = acc.prepare(enc, opt)
        step = EncoderStep(acc, enc, views, opt, objective)
        if not hsg:
            return step, None
        pcfg = replace(cfg, hpg=replace(cfg.hpg, enabled=True)) if hpg else cfg
        producer = CGanProducer(pcfg, channels, size, cfg.conditions.k)
        if cfg.train.channels_last:
            for module in producer._trainable():
                module.to(memory_format=torch.channels_last)
        producer.ctx = TrainContext(
            pcfg,
            acc,
            channels,
            size,
            None,
            None,
            views,
            objective,
            Path("."),
            lambda: acc.unwrap_model(enc),
            print,
        )
        producer.prepare(acc)
        producer.adaptive = AdaptiveTarget(cfg.hpg.adaptive_momentum)  # what for_training would set
        return step, producer

    (plain, _), (joint, producer), (enlarged, _) = build(False), build(True), build(False)
    joint2, producer2 = build(True, hpg=True)
    assert producer is not None and producer2 is not None
    b_syn = max(1, round(batch * cfg.hsg.synthetic_ratio))
    b_pair = max(1, round(batch * cfg.hpg.pair_ratio))
    k = cfg.conditions.k
    c_real = torch.randint(0, k, (batch,), device=acc.device)
    views = Views(cfg.views, channels, size).to(acc.device)
    x_views = to_float(images[:views_batch]).to(acc.device)

    def run_joint() -> None:
        z = torch.randn(b_syn, cfg.generator.z_dim, device=acc.device)
        c = torch.randint(0, k, (b_syn,), device=acc.device)
        terms = producer.step_terms(x_real, c_real, z, c, lambda_hard=cfg.hsg.lambda_hard, use_synthetic=True)
        producer.after_step(joint(x_real, terms))

    def run_joint_pairs() -> None:
        z = torch.randn(b_syn, cfg.generator.z_dim, device=acc.device)
        c = torch.randint(0, k, (b_syn,), device=acc.device)
        pz = torch.randn(b_pair, cfg.generator.z_dim, device=acc.device)
        pc = torch.randint(0, k, (b_pair,), device=acc.device)
        terms = producer2.step_terms(
            x_real, c_real, z, c, lambda_hard=cfg.hsg.lambda_hard, use_synthetic=True,
            pair_z=pz, pair_c=pc, pair_target=cfg.hpg.s_start, use_pairs=True,
            real_positive_probe=min(32, batch),
        )  # fmt: skip
        producer2.after_step(joint2(x_real, terms))

    def timed(fn) -> float:
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    x_big = to_float(images[: batch + b_syn]).to(acc.device)
    for _ in range(warmup):
        views(x_views)
        plain(x_real)
        run_joint()
        run_joint_pairs()
        enlarged(x_big)
    tv, tp, tj, tjp, te = [], [], [], [], []
    for _ in range(repeats):
        tv.append(timed(lambda: views(x_views)))
        tp.append(timed(lambda: plain(x_real)))
        tj.append(timed(run_joint))
        tjp.append(timed(run_joint_pairs))
        te.append(timed(lambda: enlarged(x_big)))
    mp, mj, me = statistics.median(tp), statistics.median(tj), statistics.median(te)
    mv, mjp = statistics.median(tv), statistics.median(tjp)
    return {
        "device": str(acc.device),
        "threads": torch.get_num_threads(),
        "mixed_precision": cfg.train.mixed_precision,
        "data": cfg.data.name,
        "image": [channels, size, size],
        "backbone": cfg.encoder.backbone,
        "real_batch": batch,
        "synthetic_batch": b_syn,
        "pair_batch": b_pair,
        "views_batch": len(x_views),
        "views_s": round(mv, 4),
        "plain_step_s": round(mp, 4),
        "joint_step_s": round(mj, 4),
        "joint_pairs_step_s": round(mjp, 4),
        "enlarged_plain_step_s": round(me, 4),
        "plain_img_per_s": round(batch / mp, 1),
        "joint_img_per_s": round((batch + b_syn) / mj, 1),
        "ratio": round(mj / mp, 3),
        "ratio_enlarged": round(mj / me, 3),
        "ratio_pairs": round(mjp / mp, 3),
        "goal": "joint HSG <= 1.10x the plain step on the enlarged batch",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="pipelines/fashion-mnist-hsg.yaml")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--views-batch", type=int, default=512)
    ap.add_argument(
        "--unfused-adam",
        action="store_true",
        help="the encoder's Adam without fused=True, as the loop built it before commit d6bcb61",
    )
    args, overrides = ap.parse_known_args()  # the rest: --section.key=value pipeline overrides
    cfg = load_pipeline(args.pipeline, [*overrides, f"--train.batch_size={args.batch}"])
    torch.manual_seed(0)
    real = load_source(cfg.data, "train")
    result = measure(
        cfg, real.images, args.batch, args.repeats, args.warmup, args.views_batch, not args.unfused_adam
    )
    mp, mj, me = result["plain_step_s"], result["joint_step_s"], result["enlarged_plain_step_s"]
    b_syn = result["synthetic_batch"]
    print(f"views of {result['views_batch']} images {result['views_s'] * 1000:.1f} ms")
    print(f"plain SimCLR step {mp * 1000:.1f} ms, joint HSG step {mj * 1000:.1f} ms, ratio {mj / mp:.2f}x")
    mjp = result["joint_pairs_step_s"]
    print(f"joint HSG+HPG step {mjp * 1000:.1f} ms, ratio {mjp / mp:.2f}x")
    print(
        f"plain step on the enlarged batch ({args.batch + b_syn} real) {me * 1000:.1f} ms: "
        f"joint / enlarged plain {mj / me:.2f}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

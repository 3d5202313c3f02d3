"""Wall time of one joint HSG step against one plain SimCLR step, same real batch, same encoder.

docs/method.md ("HSG with a conditional GAN", step 3): sharing one encoder forward/backward between the
encoder's descent and G's ascent (gradient reversal) should keep a joint step within about 1.5x of a plain
step. Both steps are the loop's own functions (synthkit.training.steps); they are timed interleaved, after
warm-up, and the medians are reported.

    python eval/bench_joint_step.py [--data fashion-mnist] [--batch 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
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
from synthkit.training.steps import EncoderStep


def measure(cfg: PipelineConfig, images: torch.Tensor, batch: int, repeats: int, warmup: int) -> dict:
    """Median wall times of a plain step, a joint HSG step and a plain step on the enlarged batch, on the
    accelerator when there is one (``train.mixed_precision`` applies)."""
    channels, size = images.shape[1], images.shape[-1]
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision)
    x_real = to_float(images[:batch]).to(acc.device)

    def build(hsg: bool) -> tuple[EncoderStep, CGanProducer | None]:
        torch.manual_seed(0)
        enc = Encoder(cfg.encoder, channels)
        if cfg.train.channels_last:
            enc = enc.to(memory_format=torch.channels_last)
        objective = build_objective(cfg.objective, enc, cfg.encoder.proj_dim, seed=0).to(acc.device)
        opt = torch.optim.Adam(enc.parameters(), lr=cfg.train.lr)
        views = Views(cfg.views, channels, size).to(acc.device)
        enc, opt = acc.prepare(enc, opt)
        step = EncoderStep(acc, enc, views, opt, objective)
        if not hsg:
            return step, None
        producer = CGanProducer(cfg, channels, size, cfg.conditions.k)
        if cfg.train.channels_last:
            producer.hsg.generator.to(memory_format=torch.channels_last)  # type: ignore[union-attr]
            producer.discriminator.to(memory_format=torch.channels_last)
        producer.ctx = TrainContext(
            cfg,
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
        return step, producer

    (plain, _), (joint, producer), (enlarged, _) = build(False), build(True), build(False)
    assert producer is not None
    b_syn = max(1, round(batch * cfg.hsg.synthetic_ratio))
    k = cfg.conditions.k
    c_real = torch.randint(0, k, (batch,), device=acc.device)

    def run_joint() -> None:
        z = torch.randn(b_syn, cfg.generator.z_dim, device=acc.device)
        c = torch.randint(0, k, (b_syn,), device=acc.device)
        terms = producer.step_terms(x_real, c_real, z, c, lambda_hard=cfg.hsg.lambda_hard, use_synthetic=True)
        producer.after_step(joint(x_real, terms))

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
        plain(x_real)
        run_joint()
        enlarged(x_big)
    tp, tj, te = [], [], []
    for _ in range(repeats):
        tp.append(timed(lambda: plain(x_real)))
        tj.append(timed(run_joint))
        te.append(timed(lambda: enlarged(x_big)))
    mp, mj, me = statistics.median(tp), statistics.median(tj), statistics.median(te)
    return {
        "device": str(acc.device),
        "threads": torch.get_num_threads(),
        "mixed_precision": cfg.train.mixed_precision,
        "data": cfg.data.name,
        "image": [channels, size, size],
        "backbone": cfg.encoder.backbone,
        "real_batch": batch,
        "synthetic_batch": b_syn,
        "plain_step_s": round(mp, 4),
        "joint_step_s": round(mj, 4),
        "enlarged_plain_step_s": round(me, 4),
        "plain_img_per_s": round(batch / mp, 1),
        "joint_img_per_s": round((batch + b_syn) / mj, 1),
        "ratio": round(mj / mp, 3),
        "goal": "<= 1.5",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="pipelines/fashion-mnist-hsg.yaml")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args, overrides = ap.parse_known_args()  # the rest: --section.key=value pipeline overrides
    cfg = load_pipeline(args.pipeline, [*overrides, f"--train.batch_size={args.batch}"])
    torch.manual_seed(0)
    real = load_source(cfg.data, "train")
    result = measure(cfg, real.images, args.batch, args.repeats, args.warmup)
    mp, mj, me = result["plain_step_s"], result["joint_step_s"], result["enlarged_plain_step_s"]
    b_syn = result["synthetic_batch"]
    print(f"plain SimCLR step {mp * 1000:.1f} ms, joint HSG step {mj * 1000:.1f} ms, ratio {mj / mp:.2f}x")
    print(
        f"plain step on the enlarged batch ({args.batch + b_syn} real) {me * 1000:.1f} ms: "
        f"joint / enlarged plain {mj / me:.2f}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Do the diffusion producers do what they claim? Guidance raises hardness; branching sets pair similarity.

Under one fixed encoder (the run's final one, eval mode) and one fixed, seeded reference batch of real
images:

1. HSG: the same ``--n`` latents (seeds) and DDIM steps sampled with guidance scale 0 (plain) and each
   ``--scales`` value; the mean per-sample hardness (NT-Xent with the reference batch, the same seeded views
   for every scale) and the share of samples that got harder than their unguided twin.
2. HPG: ``--n`` pairs from the same latents for each ``--t-splits`` value and both branch modes; mean pair
   similarity cos(h(x_a), h(x_b)) and mean absolute pixel difference. A table and a plot (PNG).

    python eval/diffusion_guidance_branching.py --run RUN_DIR [--n 128] [--out eval/results/NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusion_common import load_run

from synthkit.samplers.diffusion_sampling import Guidance, ddim_pairs, ddim_sample


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scales", default="0,0.02,0.05,0.1,0.2")
    p.add_argument("--t-splits", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.8,1.0")
    p.add_argument("--modes", default="noise,sdedit")
    p.add_argument("--out", type=Path, help="writes OUT.json and OUT.png")
    args = p.parse_args()
    art, producer, scorer = load_run(args.run)
    d = art.cfg.generator
    chunks = [(s, min(args.batch_size, args.n - s)) for s in range(0, args.n, args.batch_size)]

    def labels_for(start: int, m: int) -> tuple[torch.Generator, torch.Tensor | None]:
        g = torch.Generator().manual_seed(10_000 + start)
        return g, producer.draw_conditions(m, g)

    # 1. guidance ---
    hardness: dict[float, torch.Tensor] = {}
    for scale in sorted(set([0.0, *_floats(args.scales)])):
        out = []
        for start, m in chunks:
            g, labels = labels_for(start, m)
            guidance = Guidance(scorer, scale, d.guidance_schedule) if scale > 0 else None
            x = ddim_sample(
                producer.unet, producer.scheduler_config, labels, generator=g, steps=d.ddim_steps,
                eta=d.ddim_eta, n=m, guidance=guidance,
            )  # fmt: skip
            out.append(scorer.hardness(x, seed=start))
        hardness[scale] = torch.cat(out)
    base = hardness[0.0]
    guidance_rows = [
        {
            "scale": s,
            "hardness_mean": round(float(h.mean()), 4),
            "hardness_std": round(float(h.std()), 4),
            "share_harder_than_unguided": round(float((h > base).float().mean()), 3) if s > 0 else None,
        }
        for s, h in hardness.items()
    ]
    # 2. branching ---
    branch_rows = []
    for mode in args.modes.split(","):
        for t_split in _floats(args.t_splits):
            sims, l1 = [], []
            for start, m in chunks:
                g, labels = labels_for(start, m)
                a, b = ddim_pairs(
                    producer.unet, producer.scheduler_config, labels, t_split=t_split, generator=g,
                    steps=d.ddim_steps, eta=d.ddim_eta, mode=mode, branch_eta=d.branch_eta, n=m,
                )  # fmt: skip
                sims.append(scorer.pair_similarity(a, b))
                l1.append((a - b).abs().flatten(1).mean(1))
            s, px = torch.cat(sims), torch.cat(l1)
            branch_rows.append(
                {
                    "mode": mode,
                    "t_split": t_split,
                    "similarity_mean": round(float(s.mean()), 4),
                    "similarity_std": round(float(s.std()), 4),
                    "pixel_l1_mean": round(float(px.mean()), 4),
                }
            )
    print(f"run {args.run}: n={args.n}, DDIM {d.ddim_steps} steps, eta {d.ddim_eta}, {d.guidance_schedule}")
    print("\n| guidance scale | mean hardness | std | share harder than unguided twin |\n|---|---|---|---|")
    for r in guidance_rows:
        share = "-" if r["share_harder_than_unguided"] is None else f"{r['share_harder_than_unguided']:.3f}"
        print(f"| {r['scale']} | {r['hardness_mean']:.4f} | {r['hardness_std']:.4f} | {share} |")
    print("\n| mode | t_split | pair similarity (mean) | std | pixel L1 |\n|---|---|---|---|---|")
    for r in branch_rows:
        print(
            f"| {r['mode']} | {r['t_split']} | {r['similarity_mean']:.4f} | {r['similarity_std']:.4f} "
            f"| {r['pixel_l1_mean']:.4f} |"
        )
    result = {"run": str(args.run), "n": args.n, "guidance": guidance_rows, "branching": branch_rows}
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        for mode in args.modes.split(","):
            rows = [r for r in branch_rows if r["mode"] == mode]
            ax1.errorbar(
                [r["t_split"] for r in rows], [r["similarity_mean"] for r in rows],
                yerr=[r["similarity_std"] for r in rows], marker="o", capsize=2, label=mode,
            )  # fmt: skip
        ax1.set(
            xlabel="t_split (fraction of noise levels)", ylabel="cos(h(x_a), h(x_b))", title="HPG branching"
        )
        ax1.legend()
        ax2.plot([r["scale"] for r in guidance_rows], [r["hardness_mean"] for r in guidance_rows], marker="o")
        ax2.set(xlabel="guidance scale", ylabel="mean NT-Xent hardness", title="HSG guidance")
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Sample quality of shard sets against real data in one in-domain feature space: FID, precision, recall.

Stock Inception weights need a download, so (PRODUCT.md) the extractor is in-domain: the frozen backbone
h of a run's encoder (``--extractor-run``; its weight hash is printed beside the scores, which are only
comparable within one extractor). Real images: the extractor run's data source, ``--split`` (default the
test split, so that memorised training images earn nothing). Per set, on up to ``--n`` samples:

- FID (Heusel et al., NeurIPS 2017) between Gaussian fits of the real and the generated features;
- precision and recall with k-NN manifolds (Kynkaanniemi et al., NeurIPS 2019, k = ``--k``): the share of
  generated samples inside the real manifold, and of real samples inside the generated one.

    python eval/producer_quality.py --extractor-run RUN --set diffusion=DIR --set gan=DIR [--n 2000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from synthkit.data.sources import load_source
from synthkit.encoders.model import extract_features
from synthkit.provenance import state_dict_hash
from synthkit.run_files.final import load_final
from synthkit.shards import iter_samples


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(s1 @ s2)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    r_real, r_fake = _radii(real, k), _radii(fake, k)
    d = torch.cdist(fake, real)  # fake x real
    precision = (d <= r_real.unsqueeze(0)).any(dim=1).float().mean()
    recall = (d.t() <= r_fake.unsqueeze(0)).any(dim=1).float().mean()
    return float(precision), float(recall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extractor-run", type=Path, required=True)
    p.add_argument("--set", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    art = load_final(args.extractor_run)
    enc = art.encoder.eval()
    ext_hash = state_dict_hash({k: v.contiguous() for k, v in enc.state_dict().items()})
    real = load_source(art.cfg.data, args.split).images
    g = torch.Generator().manual_seed(args.seed)
    real = real[torch.randperm(len(real), generator=g)[: args.n]]
    f_real = extract_features(enc, real)
    rows = []
    for spec in args.set:
        name, directory = spec.split("=", 1)
        images, kinds = [], []
        for s in iter_samples(directory):
            images.append(s["image"])
            kinds.append(s["meta"]["kind"])
            if len(images) >= args.n:
                break
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        f_fake = extract_features(enc, x)
        prec, rec = precision_recall(f_real, f_fake, args.k)
        rows.append(
            {
                "set": name,
                "dir": directory,
                "n": len(images),
                "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
                "fid": round(fid(f_real.double().numpy(), f_fake.double().numpy()), 3),
                "precision": round(prec, 4),
                "recall": round(rec, 4),
            }
        )
    print(
        f"extractor: backbone of {args.extractor_run} (sha256 {ext_hash[:16]}...), real: {args.split} split"
    )
    print("\n| set | n | kinds | FID | precision | recall |\n|---|---|---|---|---|---|")
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in r["kinds"].items())
        print(
            f"| {r['set']} | {r['n']} | {kinds} | {r['fid']:.3f} | {r['precision']:.4f} | {r['recall']:.4f} |"
        )
    print(json.dumps({"extractor_run": str(args.extractor_run), "extractor_hash": ext_hash, "rows": rows}))


if __name__ == "__main__":
    main()

"""``synthkit audit``: judge a shard set before training on it.

Reads a shard set with the safe reader, compares it with real images (a shard set, or a named source
through :func:`synthkit.data.sources.load_source`) in one feature space (:mod:`synthkit.metrics.extractors`),
and writes ``report.json`` and a self-contained ``report.html`` (:mod:`synthkit.report.html`). Both are
written to a temp name and renamed, ``report.json`` last: a directory without it holds no finished report.

Steps of :func:`audit`:
1. read the synthetic set and the real images; convert both explicitly to the extractor's input;
2. extract features once, in batches;
3. feature-space metrics: FID, KID, precision/recall/density/coverage and memorisation (one chunked pass),
   uniformity, alignment and similarity of positive pairs, class coverage when the real data has labels;
4. image and metadata metrics: broken images, condition counts and entropy, hardness (recorded, and
   recomputed under an encoder when a run is given), pair similarity over generator steps;
5. write the report. Every score records the extractor that produced it (``null`` for those that use none).

Example::

    >>> report = audit("shards/fmnist-hard", "fashion-mnist", "audits/fmnist", extractor="classifier",
    ...                classifier="extractors/fmnist")  # doctest: +SKIP
    >>> report["metrics"]["fid"]  # doctest: +SKIP
    {'value': 12.3, 'extractor': 'classifier:4be1c0a2f3d1', 'description': '...'}
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit.atomic import check_output_dir, write_json_atomic, write_text_atomic
from synthkit.config import DataConfig
from synthkit.data.sources import load_source
from synthkit.errors import AuditError, ConfigError
from synthkit.metrics import (
    alignment_uniformity,
    broken,
    conditions_coverage,
    fid,
    memorisation,
    pairs,
    prdc,
)
from synthkit.metrics.extractors import EXTRACTORS, FeatureExtractor, load_extractor
from synthkit.metrics.knn import knn_predict
from synthkit.provenance import created_by
from synthkit.registry import SOURCES
from synthkit.report.html import AuditImages, render_report
from synthkit.shards import iter_samples, open_set
from synthkit.shards.inspect import describe
from synthkit.shards.location import is_url

logger = logging.getLogger(__name__)

AUDIT_FORMAT = "synthkit-audit"
AUDIT_VERSION = 1
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
PAIR_KINDS = ("pair_a", "pair_b")
MAX_LISTED = 1000  # broken-image indices listed per reason
AUTO = "auto"


def choose_extractor(
    manifest: dict[str, Any],
    *,
    encoder_run: str | os.PathLike[str] | None = None,
    classifier: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
) -> tuple[str, str | os.PathLike[str] | None, str]:
    """The feature space of ``extractor: auto``: (kind, the encoder run to use, why), in this order:

    1. what the arguments name (``--encoder`` RUN, ``--classifier`` DIR, ``--inception-weights`` FILE);
    2. the encoder of the run that made the set (the manifest's ``producer.run_dir``), when that run is on
       this machine: an in-domain feature space, and the one the set's hardness was measured in;
    3. pixels, which needs nothing (a converted real set, or a set from another machine).
    """
    if encoder_run is not None:
        return "encoder", encoder_run, "--encoder was given"
    if classifier is not None:
        return "classifier", None, "--classifier was given"
    if inception_weights is not None:
        return "inception", None, "--inception-weights was given"
    producer = manifest.get("producer")
    run = producer.get("run_dir") if isinstance(producer, dict) else None
    if isinstance(run, str) and (Path(run) / "final").is_dir():
        return "encoder", run, f"default: the encoder of the run that made the set ({run})"
    return "pixels", None, "default: pixels (no --encoder, --classifier or --inception-weights, and no run)"


@dataclass(frozen=True)
class AuditConfig:
    """Hyperparameters of one audit; recorded in the report.

    ``k``: neighbourhood of the PRDC manifolds (Naeem et al. use 5). ``chunk_size``: rows and columns per
    distance block (memory, not results). ``kid_subsets`` x ``kid_subset_size``: KID's random subsets.
    ``memorisation_threshold``: suspect when nearest-real distance / that real image's own nearest-real
    distance is below it. ``uniformity_max``: uniformity uses a seeded subsample of at most this many
    points per set (all pairs of 50,000 points would cost more than everything else together).
    """

    extractor: str = "auto"
    real_split: str = "train"
    k: int = 5
    chunk_size: int = 4096
    batch_size: int = 512
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    memorisation_threshold: float = 0.25
    saturated_fraction: float = 0.99
    uniformity_max: int = 5000
    max_samples: int | None = None
    max_real: int | None = None
    top: int = 16
    grid_per_row: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (
                self.extractor in (AUTO, *EXTRACTORS),
                "extractor",
                f"must be one of {AUTO}, {', '.join(EXTRACTORS)}",
            ),
            (self.real_split in ("train", "test"), "real_split", "must be train or test"),
            (self.k >= 1, "k", "must be >= 1"),
            (self.chunk_size >= 1 and self.batch_size >= 1, "chunk_size/batch_size", "must be >= 1"),
            (self.kid_subsets >= 1 and self.kid_subset_size >= 2, "kid_subsets/kid_subset_size", "too small"),
            (self.memorisation_threshold > 0, "memorisation_threshold", "must be > 0"),
            (0 < self.saturated_fraction <= 1, "saturated_fraction", "must be in (0, 1]"),
            (self.uniformity_max >= 2, "uniformity_max", "must be >= 2"),
            (self.max_samples is None or self.max_samples >= 2, "max_samples", "must be >= 2 or None"),
            (self.max_real is None or self.max_real >= 2, "max_real", "must be >= 2 or None"),
            (self.top >= 1 and self.grid_per_row >= 1, "top/grid_per_row", "must be >= 1"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ConfigError(f"audit.{key} {msg}, got {getattr(self, key.split('/')[0])!r}")


# --------------------------------------------------------------------------- inputs


def _read_set(
    directory: str | Path, limit: int | None
) -> tuple[list[np.ndarray], list[dict], list[int | None], dict]:
    """Samples of a published set (a directory or URL), through the safe reader's checks."""
    shard_set = open_set(directory)
    manifest = shard_set.manifest
    assert manifest is not None
    images, metas, labels = [], [], []
    for sample in iter_samples(shard_set.location):
        images.append(sample["image"])
        metas.append(sample["meta"])
        labels.append(sample["cls"])
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise AuditError(f"{directory}: the set holds no samples")
    return images, metas, labels, manifest


def _stack(images: list[np.ndarray], what: str) -> torch.Tensor:
    shapes = Counter(im.shape for im in images)
    if len(shapes) > 1:
        listed = ", ".join(f"{h}x{w}x{c} ({n})" for (h, w, c), n in shapes.most_common(4))
        raise AuditError(f"{what} images have mixed sizes ({listed}); an audit needs one size per set")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _load_real(
    real: str, root: str | None, split: str, size: int, channels: int | None, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...] | None, dict[str, Any]]:
    """Real images as uint8 N x C x H x W, labels (or None), class names, and a description."""
    if is_url(real) or Path(real).is_dir():
        images, _, labels, manifest = _read_set(real, None)
        x = _stack(images, "real")
        y = torch.tensor(labels, dtype=torch.int64) if all(c is not None for c in labels) else None
        classes = manifest.get("classes")
        where = real if is_url(real) else str(Path(real).resolve())
        desc = {"kind": "shards", "dir": where, "name": manifest.get("name")}
    elif real in SOURCES:
        source = load_source(DataConfig(name=real, root=root, size=size, channels=channels), split)
        x, y, classes = source.images, source.labels, source.classes
        desc = {"kind": "source", "name": real, "root": root, "split": split, "size": size}
    else:
        raise AuditError(
            f"real data {real!r} is neither a shard set directory nor a known source "
            f"({', '.join(SOURCES.names())})"
        )
    if limit is not None and x.shape[0] > limit:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x, y = x[keep], (y[keep] if y is not None else None)
        desc["subsample"] = {"n": limit, "seed": seed}
    desc["count"] = int(x.shape[0])
    desc["labels"] = y is not None
    return x, y, tuple(classes) if classes else None, desc


def _shape_text(x: torch.Tensor) -> str:
    return f"{x.shape[2]}x{x.shape[3]}x{x.shape[1]}"


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------- metrics


def _score(value: Any, extractor: str | None, description: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "extractor": extractor, "description": description, **extra}


def _number(meta: dict, key: str) -> float | None:
    v = meta.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
        return float(v)
    return None


def _find_pairs(metas: list[dict]) -> list[tuple[int, int]]:
    """(index of pair_a, index of pair_b) of every complete pair, in order of pair_a."""
    sides: dict[Any, dict[str, int]] = {}
    for i, meta in enumerate(metas):
        kind, pid = meta.get("kind"), meta.get("pair_id")
        if kind in PAIR_KINDS and isinstance(pid, (int, str)) and not isinstance(pid, bool):
            sides.setdefault(pid, {}).setdefault(kind, i)
    found = [(s["pair_a"], s["pair_b"]) for s in sides.values() if len(s) == 2]
    return sorted(found)


def _pair_step(meta_a: dict, meta_b: dict) -> int | None:
    for meta in (meta_a, meta_b):
        for key in ("generator_step", "step"):
            v = meta.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _subsample(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]]


def _hardness_under_encoder(
    encoder_run: str | os.PathLike[str], syn: torch.Tensor, real: torch.Tensor, seed: int
) -> tuple[np.ndarray, str]:
    """Hardness recomputed under a run: its encoder and objective, a reference batch of ``real``."""
    from synthkit.data.views import Views
    from synthkit.metrics.extractors import encoder_extractor
    from synthkit.metrics.hardness import hardness_of
    from synthkit.objectives.scoring import Scorer, reference_batch
    from synthkit.training.artifacts import load_final

    art = load_final(encoder_run)
    ext = encoder_extractor(encoder_run)
    syn_x, real_x = ext.prepare(syn), ext.prepare(real)
    views = Views(art.cfg.views, ext.channels or syn_x.shape[1], syn_x.shape[-1])
    scorer = Scorer(
        art.encoder, views, art.objective, reference_batch(real_x, art.cfg.train.batch_size, seed)
    )
    return hardness_of(scorer, syn_x.float() / 255.0, seed=seed).numpy(), ext.ident


def _num_conditions(metas: list[dict], manifest: dict) -> int | None:
    ks = {m.get("condition_k") for m in metas if isinstance(m.get("condition_k"), int)}
    if len(ks) == 1:
        return ks.pop()
    cond = (
        (manifest.get("config") or {}).get("conditions") if isinstance(manifest.get("config"), dict) else None
    )
    return cond.get("k") if isinstance(cond, dict) and isinstance(cond.get("k"), int) else None


def audit(
    shards: str | os.PathLike[str],
    real: str,
    out_dir: str | os.PathLike[str],
    *,
    config: AuditConfig | None = None,
    encoder_run: str | os.PathLike[str] | None = None,
    classifier: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    real_root: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Audit the shard set ``shards`` against ``real`` and write the report into ``out_dir``.

    Args:
        shards: a published shard set directory.
        real: a shard set directory, or a source name (``digits``, ``fashion-mnist``, ...) read with
            ``real_root`` and ``config.real_split``. Memorisation compares with these images, so pass the
            generator's training data here (the default split is ``train``).
        out_dir: where ``report.json`` and ``report.html`` go; never inside ``shards``.
        config: the audit's hyperparameters (:class:`AuditConfig`).
        encoder_run: a finished run: the ``encoder`` extractor's weights, and the encoder under which
            hardness is recomputed (whatever the extractor).
        classifier: the directory of a classifier from :func:`~synthkit.metrics.extractors.train_classifier`.
        inception_weights: a local torchvision inception_v3 weights file.
        progress: unused (kept for callers); each step's time is one log line (``synthkit.audit``).

    Returns:
        The report dict, as written to ``report.json``.
    """
    cfg = config or AuditConfig()
    set_dir, out = str(shards), Path(out_dir)  # a URL stays text: Path would mangle "http://"
    local = None if is_url(set_dir) else Path(set_dir).resolve()
    if local is not None and local in (out.resolve(), *out.resolve().parents):
        raise AuditError(
            f"refusing to write the audit into the shard set {set_dir}; choose a directory outside"
        )
    check_output_dir(out)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        logger.info("audit: %s done in %.1f s", name, timings[name])

    # 1. Inputs, converted explicitly to the extractor's input.
    raw, metas, _, manifest = _read_set(set_dir, cfg.max_samples)
    syn = _stack(raw, "synthetic")
    del raw
    kind, chosen_by = cfg.extractor, f"extractor: {cfg.extractor}"
    if kind == AUTO:
        kind, encoder_run, chosen_by = choose_extractor(
            manifest, encoder_run=encoder_run, classifier=classifier, inception_weights=inception_weights
        )
    ext: FeatureExtractor = load_extractor(
        kind,
        encoder_run=encoder_run,
        classifier=classifier,
        inception_weights=inception_weights,
        pixels_shape=(syn.shape[-1], syn.shape[1]),
    )
    real_x, real_y, classes, real_desc = _load_real(
        real, real_root, cfg.real_split, ext.size or syn.shape[-1], ext.channels, cfg.max_real, cfg.seed
    )
    n_syn, n_real = syn.shape[0], real_x.shape[0]
    if min(n_syn, n_real) <= cfg.k:
        raise AuditError(f"an audit with k={cfg.k} needs more than {cfg.k} synthetic and real images")
    syn_in, real_in = ext.prepare(syn), ext.prepare(real_x)
    conversions = {
        name: {"from": _shape_text(a), "to": _shape_text(b)} if a.shape[1:] != b.shape[1:] else None
        for name, a, b in (("synthetic", syn, syn_in), ("real", real_x, real_in))
    }
    step("read")

    # 2. Features.
    f_syn = ext.features(syn_in, cfg.batch_size)
    f_real = ext.features(real_in, cfg.batch_size)
    del syn_in, real_in
    step("features")

    # 3. Feature-space metrics.
    xid = ext.ident
    metrics: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    metrics[fid.FID] = _score(
        fid.fid(f_real, f_syn, cfg.chunk_size), xid, "Frechet distance (lower is closer)"
    )
    kid_mean, kid_std = fid.kid(
        f_real, f_syn, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed
    )
    kid_size = min(cfg.kid_subset_size, n_syn, n_real)
    metrics[fid.KID_MEAN] = _score(kid_mean, xid, f"KID, mean over {cfg.kid_subsets} subsets of {kid_size}")
    metrics[fid.KID_STD] = _score(kid_std, xid, "KID, std over the subsets")
    step("fid_kid")
    pr = prdc.prdc(f_real, f_syn, k=cfg.k, chunk_size=cfg.chunk_size)
    texts = {
        prdc.PRECISION: "share of samples on the real manifold (fidelity)",
        prdc.RECALL: "share of real images on the samples' manifold (diversity)",
        prdc.DENSITY: "real-neighbourhood density of samples, 1 = like real (fidelity)",
        prdc.COVERAGE: "share of real neighbourhoods holding a sample (diversity)",
    }
    for key, value in pr.scores().items():
        metrics[key] = _score(value, xid, texts[key], k=cfg.k)
    mem = memorisation.memorisation_from_neighbours(
        pr.fake_nn_distance, pr.fake_nn_index, pr.real_nn1, threshold=cfg.memorisation_threshold, top=cfg.top
    )
    ratio = (pr.fake_nn_distance / pr.real_nn1[pr.fake_nn_index].clamp_min(1e-12)).numpy()
    details[memorisation.MEMORISATION] = mem
    metrics["memorisation_suspects"] = _score(
        mem["suspect_count"],
        xid,
        f"samples nearer a real image than {cfg.memorisation_threshold} x its nearest real neighbour",
        fraction=mem["suspect_fraction"],
    )
    step("prdc_memorisation")
    u_syn = alignment_uniformity.uniformity(
        _subsample(f_syn, cfg.uniformity_max, cfg.seed), chunk_size=cfg.chunk_size
    )
    u_real = alignment_uniformity.uniformity(
        _subsample(f_real, cfg.uniformity_max, cfg.seed + 1), chunk_size=cfg.chunk_size
    )
    metrics["uniformity_synthetic"] = _score(u_syn, xid, "Wang & Isola uniformity (t=2) of the samples")
    metrics["uniformity_real"] = _score(u_real, xid, "the same for the real images, for reference")
    if real_y is not None:
        num_classes = int(real_y.max()) + 1
        pred = knn_predict(f_real, real_y, f_syn, k=min(20, n_real), temperature=0.1, num_classes=num_classes)
        cc = conditions_coverage.class_coverage(real_y, pr.real_covered, pred, num_classes, classes)
        details[conditions_coverage.CLASS_COVERAGE] = {
            **cc,
            "extractor": xid,
            "predicted_by": "weighted kNN, k=20",
        }
        metrics["classes_generated"] = _score(
            cc["classes_generated"], xid, f"classes (of {num_classes}) the samples are assigned to by kNN"
        )
        metrics["min_class_coverage"] = _score(cc["min_class_coverage"], xid, "coverage of the worst class")

    # 4. Pairs, hardness, conditions, broken images.
    pair_idx = _find_pairs(metas)
    if pair_idx:
        a_idx = torch.tensor([a for a, _ in pair_idx])
        b_idx = torch.tensor([b for _, b in pair_idx])
        steps = [_pair_step(metas[a], metas[b]) for a, b in pair_idx]
        feature_sims = pairs.pair_cosine(f_syn[a_idx], f_syn[b_idx]).tolist()
        recorded = [_number(metas[a], "pair_similarity") for a, _ in pair_idx]
        known = [(s, st) for s, st in zip(recorded, steps, strict=True) if s is not None]
        details["pairs"] = {
            "count": len(pair_idx),
            "feature_similarity": {**pairs.pair_similarity_summary(feature_sims, steps), "extractor": xid},
            "recorded_similarity": pairs.pair_similarity_summary(*zip(*known, strict=True))
            if known
            else None,
        }
        metrics["pair_similarity"] = _score(
            float(np.mean(feature_sims)), xid, "mean cosine similarity of pairs"
        )
        metrics["alignment_pairs"] = _score(
            alignment_uniformity.alignment(f_syn[a_idx], f_syn[b_idx]), xid, "Wang & Isola alignment of pairs"
        )
        trend = details["pairs"]["feature_similarity"]["trend"]
        if trend is not None:
            metrics["pair_similarity_trend"] = _score(
                trend["slope_per_1k_steps"], xid, "change of pair similarity per 1,000 generator steps"
            )
    else:
        details["pairs"] = {"count": 0}
    recorded_h = [_number(m, "hardness") for m in metas]
    hardness_values: np.ndarray | None = None
    hard: dict[str, Any] = {}
    if all(h is not None for h in recorded_h):
        hardness_values = np.asarray(recorded_h, dtype=np.float64)
        hard["recorded"] = {**describe(recorded_h), "extractor": None, "source": "sample metadata"}
        metrics["hardness_recorded_mean"] = _score(hard["recorded"]["mean"], None, "mean recorded hardness")
    if encoder_run is not None:
        values, enc_id = _hardness_under_encoder(encoder_run, syn, real_x, cfg.seed)
        hardness_values = values.astype(np.float64)
        hard["encoder"] = {**describe(values.tolist()), "extractor": enc_id, "source": "recomputed NT-Xent"}
        metrics["hardness_mean"] = _score(
            float(values.mean()), enc_id, "mean per-sample NT-Xent under the encoder"
        )
    details["hardness"] = hard or None
    conditions = [m.get("condition") if isinstance(m.get("condition"), int) else None for m in metas]
    details[conditions_coverage.CONDITION_COVERAGE] = conditions_coverage.condition_coverage(
        conditions, _num_conditions(metas, manifest)
    )
    if details[conditions_coverage.CONDITION_COVERAGE]["conditions_seen"]:
        metrics["condition_entropy"] = _score(
            details[conditions_coverage.CONDITION_COVERAGE]["normalized_entropy"],
            None,
            "entropy of condition counts / log(number of conditions); 1 = uniform",
        )
    bad = broken.broken_images(syn, saturated_fraction=cfg.saturated_fraction)
    # report.json stays small even for a set that is all blank: the first indices per reason are enough
    bad["indices"] = {r: idx[:MAX_LISTED] for r, idx in bad["indices"].items()}
    details[broken.BROKEN] = bad
    metrics["broken"] = _score(
        bad["broken"], None, "constant, saturated or non-finite images", fraction=bad["fraction"]
    )
    step("other_metrics")

    # 5. The report.
    producer = manifest.get("producer")
    report = {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "shards": {
            "dir": set_dir if local is None else str(local),
            "name": manifest.get("name"),
            "total": manifest.get("total"),
            "audited": n_syn,
            "producer": producer.get("name") if isinstance(producer, dict) else producer,
            "hashes": producer.get("hashes") if isinstance(producer, dict) else None,
            "by_kind": dict(Counter(str(m.get("kind")) for m in metas)),
        },
        "real": real_desc,
        "extractor": {**ext.describe(), "chosen_by": chosen_by},
        "conversions": conversions,
        "metrics": metrics,
        "details": details,
        "config": asdict(cfg),
        "created_by": created_by(),
        "timings_s": timings,
    }
    images = AuditImages(
        synthetic=_hwc(syn),
        real=_hwc(real_x),
        conditions=conditions,
        hardness=hardness_values,
        pairs=pair_idx,
        values={"memorisation_ratio": ratio, "nearest_real_distance": pr.fake_nn_distance.numpy()},
    )
    html = render_report(report, images)
    step("render")  # the last timing: report.json holds them all
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / REPORT_HTML, html)
    write_json_atomic(out / REPORT_JSON, report, indent=2)
    return report

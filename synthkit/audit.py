"""``synthkit audit``: judge a shard set before training on it.

Reads a shard set with the safe reader, compares it with real images (a shard set, or a named source
through :func:`synthkit.data.sources.load_source`) in one feature space (:mod:`synthkit.metrics.extractors`),
and writes ``report.json`` and a self-contained ``report.html`` (:mod:`synthkit.report.html`). Both are
written to a temp name and renamed, ``report.json`` last: a directory without it holds no finished report.

Steps of :func:`audit`:
1. stream the real images, then the synthetic set, batch by batch (:mod:`synthkit.audit_stream`): each
   batch is converted explicitly to the extractor's input, its features extracted on ``audit.device``
   (default: CUDA when there is one), and broken-image counts and recomputed hardness folded in; only the
   features and the metadata the audit reads stay;
2. feature-space metrics: FID (exact: streamed float64 moments), KID, precision/recall/density/coverage
   and memorisation, uniformity, alignment and similarity of positive pairs, class coverage when the real
   data has labels. Up to ``audit.exact_max`` points per set PRDC and memorisation are exact (all pairs,
   chunked); above it PRDC is computed on seeded samples and memorisation's neighbours come from an IVF
   index (:mod:`synthkit.metrics.estimates`), and ``report["methods"]`` says how, with the measured error;
3. image and metadata metrics: broken images, condition counts and entropy, hardness (recorded, and
   recomputed under an encoder when a run is given), pair similarity over generator steps;
4. the real-vs-real reference (:func:`_open_reference`): held-out real images, at the synthetic set's size
   where the data allows, scored against the same real images in the same feature space; each figure gets
   its reference, and the gates of :mod:`synthkit.audit_verdict` (broken, memorisation, precision,
   coverage, conditions, extractor) give the verdict, pass / warn / fail with a one-sentence reason;
5. the report: the images it shows are read again from only the shards that hold them. Every score
   records the extractor that produced it (``null`` for those that use none) and whether it is exact.

Example::

    >>> report = audit("shards/fmnist-hard", "fashion-mnist", "audits/fmnist", extractor="classifier",
    ...                classifier="extractors/fmnist")  # doctest: +SKIP
    >>> report["metrics"]["fid"]  # doctest: +SKIP
    {'value': 12.3, 'extractor': 'classifier:4be1c0a2f3d1', 'description': '...', 'reference': 1.3}
    >>> report["verdict"]["status"]  # doctest: +SKIP
    'pass'
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit import audit_verdict
from synthkit.atomic import check_output_dir, write_json_atomic, write_text_atomic
from synthkit.audit_stream import Batch, SetSide, TensorSide, open_side, stream_features
from synthkit.audit_verdict import Gate
from synthkit.config import AuditConfig, DataConfig
from synthkit.data.inspect import describe
from synthkit.data.sources import load_source
from synthkit.data.views import Views, to_float
from synthkit.devices import resolve_device
from synthkit.errors import AuditError, SynthkitError
from synthkit.metrics import (
    alignment_uniformity,
    broken,
    conditions_coverage,
    estimates,
    fid,
    memorisation,
    pairs,
    prdc,
)
from synthkit.metrics.extractors import FeatureExtractor, encoder_extractor, load_extractor
from synthkit.metrics.hardness import hardness_of
from synthkit.metrics.knn import knn_predict
from synthkit.objectives.scoring import Scorer
from synthkit.provenance import created_by
from synthkit.registry import SOURCES
from synthkit.report.html import AuditImages, render_report, shown_indices
from synthkit.run_files.final import load_final
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


# --------------------------------------------------------------------------- inputs


def _open_real(
    real: str, root: str | None, split: str, size: int, channels: int | None, limit: int | None, seed: int
) -> tuple[SetSide | TensorSide, tuple[str, ...] | None, dict[str, Any]]:
    """The real side (a shard set, streamed; or a named source, in memory), class names, a description.

    ``limit``: a seeded random subset of that many images, the same draw for both kinds of source.
    """
    if is_url(real) or Path(real).is_dir():
        side: SetSide | TensorSide = open_side(real, "real", None)
        classes = side.manifest.get("classes")
        where = real if is_url(real) else str(Path(real).resolve())
        desc: dict[str, Any] = {"kind": "shards", "dir": where, "name": side.manifest.get("name")}
    elif real in SOURCES:
        source = load_source(DataConfig(name=real, root=root, size=size, channels=channels), split)
        side, classes = TensorSide(source.images, source.labels), source.classes
        desc = {"kind": "source", "name": real, "root": root, "split": split, "size": size}
    else:
        raise AuditError(
            f"real data {real!r} is neither a shard set directory nor a known source "
            f"({', '.join(SOURCES.names())})"
        )
    if limit is not None and side.count > limit:
        keep = torch.randperm(side.count, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        if isinstance(side, TensorSide):
            side = TensorSide(side.images[keep], side.labels[keep] if side.labels is not None else None)
        else:
            side.keep, side.count = keep.numpy(), limit
        desc["subsample"] = {"n": limit, "seed": seed}
    desc["count"] = side.count
    return side, tuple(classes) if classes else None, desc


def _chw_text(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


class _HardnessStream:
    """Hardness recomputed under a run (its encoder, objective and a reference batch of the real images),
    fed batch by batch: the real stream gives the reference images, the synthetic stream is scored in
    chunks of 256 aligned to the set's indices, the chunking and seeding of ``synthkit generate``
    (:func:`synthkit.metrics.hardness.hardness_of`), so a set's recorded hardness is recomputed exactly.

    It runs on the CPU whatever ``audit.device``: the views are random, and the CPU is where ``generate``
    draws them, so the recomputed values do not depend on the audit's device.
    """

    CHUNK = 256

    def __init__(self, encoder_run: str | os.PathLike[str], n_real: int, seed: int) -> None:
        self.art = load_final(encoder_run)
        self.ext = encoder_extractor(encoder_run)
        self.ext.module = self.art.encoder  # one encoder, on the CPU
        self.seed = seed
        # the draw of synthkit.objectives.scoring.reference_batch over the audited real images
        g = torch.Generator().manual_seed(seed)
        draw = torch.randperm(n_real, generator=g)[: min(self.art.cfg.train.batch_size, n_real)].tolist()
        self.slots = {p: slot for slot, p in enumerate(draw)}
        self.reference: list[torch.Tensor | None] = [None] * len(draw)
        self.scorer: Any = None
        self.pending: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.offset = 0

    def capture(self, batch: Batch) -> None:
        for i in range(batch.images.shape[0]):
            slot = self.slots.get(batch.start + i)
            if slot is not None:
                self.reference[slot] = batch.images[i].clone()

    def _score(self, x: torch.Tensor) -> None:
        if self.scorer is None:
            real_x = self.ext.prepare(torch.stack([r for r in self.reference if r is not None]))
            views = Views(self.art.cfg.views, self.ext.channels or x.shape[1], x.shape[-1])
            self.scorer = Scorer(
                self.art.encoder, views, self.art.objective, to_float(real_x), seed=self.seed
            )
        self.values.append(hardness_of(self.scorer, x.float() / 255.0, seed=self.seed, offset=self.offset))
        self.offset += x.shape[0]

    def add(self, batch: Batch) -> None:
        self.pending.append(self.ext.prepare(batch.images))
        if sum(p.shape[0] for p in self.pending) >= self.CHUNK:
            x = torch.cat(self.pending)
            whole = x.shape[0] // self.CHUNK * self.CHUNK
            self._score(x[:whole])
            self.pending = [x[whole:]] if whole < x.shape[0] else []

    def finish(self) -> np.ndarray:
        if self.pending:
            self._score(torch.cat(self.pending))
            self.pending = []
        return torch.cat(self.values).numpy() if self.values else np.empty(0)


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
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
    return x[pick.to(x.device)]


def _num_conditions(metas: list[dict], manifest: dict) -> int | None:
    ks = {m.get("condition_k") for m in metas if isinstance(m.get("condition_k"), int)}
    if len(ks) == 1:
        return ks.pop()
    cond = (
        (manifest.get("config") or {}).get("conditions") if isinstance(manifest.get("config"), dict) else None
    )
    return cond.get("k") if isinstance(cond, dict) and isinstance(cond.get("k"), int) else None


def _peak_mib() -> str:
    """The process's peak resident memory so far (Linux ``VmHWM``), for the step log lines."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return str(int(line.split()[1]) // 1024)
    except (OSError, StopIteration, ValueError):
        return "?"


def _prdc_and_neighbours(
    f_real: torch.Tensor, f_syn: torch.Tensor, cfg: AuditConfig, real_knn: dict[str, Any] | None = None
) -> tuple[dict[str, float], dict[str, Any], tuple[torch.Tensor, ...], dict[str, Any], dict[str, Any]]:
    """PRDC scores, how they were computed, the neighbours of memorisation (on the CPU), how, and the
    class-coverage inputs (``covered``: per real point of ``real_index``; ``fake_index``: samples to classify;
    None: all). ``real_knn``: a cache of the exact path's real k-NN distances, keyed by the real tensor, so
    the reference and the size-matched samples, scored against the same real features, do not redo the
    N x N pass."""
    n_real, n_syn = f_real.shape[0], f_syn.shape[0]
    start = time.perf_counter()
    if max(n_real, n_syn) <= cfg.exact_max:
        cached = real_knn.get("knn") if real_knn is not None and real_knn.get("of") is f_real else None
        pr = prdc.prdc(f_real, f_syn, k=cfg.k, chunk_size=cfg.chunk_size, real_knn=cached)
        if real_knn is not None:
            real_knn.update({"of": f_real, "knn": pr.real_knn})
        points = {"real": n_real, "synthetic": n_syn}
        nn = (pr.fake_nn_distance.cpu(), pr.fake_nn_index.cpu(), pr.real_nn1.cpu())
        cover = {"covered": pr.real_covered.cpu(), "real_index": None, "fake_index": None}
        how = {"exact": True, "method": "all pairs", "points": points}
        return pr.scores(), how, nn, dict(how), cover
    sp = estimates.sampled_prdc(
        f_real,
        f_syn,
        k=cfg.k,
        sample=cfg.prdc_sample,
        repeats=cfg.prdc_repeats,
        seed=cfg.seed,
        chunk_size=cfg.chunk_size,
    )
    how = {
        "exact": False,
        "method": "seeded sample",
        "description": (
            f"mean over {cfg.prdc_repeats} seeded draws of at most {cfg.prdc_sample} points per set "
            "(Naeem et al., 2020, use 10,000); error: the standard deviation between draws. PRDC depends "
            "on the sample size (the k-NN radii shrink as points are added), so compare audits at the same "
            "prdc_sample"
        ),
        "sample": sp.sample,
        "repeats": cfg.prdc_repeats,
        "seed": cfg.seed,
        "std": sp.std,
        "per_draw": sp.per_draw,
        "seconds": round(time.perf_counter() - start, 3),
    }
    nb = estimates.ivf_neighbours(
        f_real,
        f_syn,
        nlist=cfg.ann_nlist,
        nprobe=cfg.ann_nprobe,
        iters=cfg.ann_iters,
        probe=cfg.ann_probe,
        threshold=cfg.memorisation_threshold,
        seed=cfg.seed,
        chunk_size=cfg.chunk_size,
    )
    nn = (nb.fake_nn_distance.cpu(), nb.fake_nn_index.cpu(), nb.real_nn1.cpu())
    cover = {"covered": sp.first.real_covered.cpu(), "real_index": sp.real_index, "fake_index": sp.fake_index}
    return sp.scores, how, nn, {"exact": False, **nb.info}, cover


def _estimated(how: dict[str, Any], key: str | None = None) -> str | None:
    """How a score was estimated, in one phrase for the report (None: it is exact)."""
    if how["exact"]:
        return None
    if how["method"] == "seeded sample":
        std = f"; std {how['std'][key]:.3g} between draws" if key is not None else ""
        return (
            f"mean of {how['repeats']} seeded samples of {how['sample']['real']} real and "
            f"{how['sample']['synthetic']} synthetic points{std}"
        )
    recall = how["recall_at_1"]
    return (
        f"IVF nearest neighbours (nlist {how['nlist']}, nprobe {how['nprobe']}); recall@1 "
        f"{recall['synthetic_to_real']:.3f} (samples), {recall['real_to_real']:.3f} (real); suspect verdicts "
        f"as exact for {100 * how['suspect_agreement']:.1f} % of {how['probe']['synthetic']} probed samples"
    )


# --------------------------------------------------------------------------- KID, classes, the reference


def kid_subset_size(n_real: int, n_syn: int, wanted: int) -> int | None:
    """KID's subset size: ``wanted``, at most half the smaller set so that subsets differ and their std
    means something (subsets of a whole set are all that set: std 0); None when the sets are too small."""
    half = min(n_real, n_syn) // 2
    return min(wanted, half) if half >= 2 else None


def _kid(f_real: torch.Tensor, f_syn: torch.Tensor, cfg: AuditConfig) -> tuple[float, float | None, str]:
    """KID's mean, its std between subsets (None: not measurable), and how it was drawn."""
    size = kid_subset_size(f_real.shape[0], f_syn.shape[0], cfg.kid_subset_size)
    if size is None:
        whole = min(f_real.shape[0], f_syn.shape[0])
        mean, _ = fid.kid(f_real, f_syn, subsets=1, subset_size=whole, seed=cfg.seed)
        return mean, None, f"one subset of {whole}: too few images for subsets that differ, so no std"
    mean, std = fid.kid(f_real, f_syn, subsets=cfg.kid_subsets, subset_size=size, seed=cfg.seed)
    return mean, std, f"mean over {cfg.kid_subsets} seeded subsets of {size} (at most half the smaller set)"


def _class_view(
    f_real: torch.Tensor,
    real_y: torch.Tensor,
    cover: dict[str, Any],
    query: torch.Tensor,
    classes: tuple[str, ...] | None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Class coverage of ``query`` against labelled real features (weighted kNN, k=20, t=0.1, on PRDC's
    first sample when PRDC was sampled) and the predicted classes of the samples classified."""
    num_classes = int(real_y.max()) + 1
    ri, fi = cover["real_index"], cover["fake_index"]
    dev = f_real.device
    ref_f, ref_y = (f_real, real_y) if ri is None else (f_real[ri.to(dev)], real_y[ri])
    q = query if fi is None else query[fi.to(dev)]
    pred = knn_predict(
        ref_f, ref_y, q, k=min(20, ref_f.shape[0]), temperature=0.1, num_classes=num_classes
    ).cpu()
    cc = conditions_coverage.class_coverage(ref_y, cover["covered"], pred, num_classes, classes)
    return {**cc, "exact": ri is None}, pred


@dataclass
class Reference:
    """The real-vs-real reference: ``held`` (features of held-out real images, scored as if they were
    samples) against ``real`` (the real features they are compared with), labels where known."""

    held: torch.Tensor
    held_labels: torch.Tensor | None
    real: torch.Tensor
    real_labels: torch.Tensor | None
    desc: dict[str, Any]


def _open_reference(
    inp: _Inputs, cfg: AuditConfig, real: str, real_root: str | None
) -> tuple[Reference | None, dict[str, Any]]:
    """The held-out real images of the reference, at the synthetic set's size where the data allows.

    A named source with ``reference: auto`` holds out its other split (disjoint by construction) against the
    audited real images; otherwise the real set is cut in two disjoint parts (seeded): the held-out part, of
    the synthetic set's size but at most half, against the rest.
    """
    if cfg.reference == "none":
        return None, {"kind": "none", "why": "the reference was turned off (--reference none)"}
    why_split = "the real data is a shard set, which has no second split"
    if cfg.reference == AUTO and not (is_url(real) or Path(real).is_dir()):
        ref, why_split = _held_out_split(inp, cfg, real, real_root)
        if ref is not None:
            return ref, ref.desc
    return _disjoint_split(inp, cfg, why_split)


def _held_out_split(
    inp: _Inputs, cfg: AuditConfig, real: str, real_root: str | None
) -> tuple[Reference | None, str]:
    """The named source's other split, at most the synthetic set's size, against the audited real images;
    or None and why it cannot be (unreadable, or too few images for ``k``)."""
    other = "test" if cfg.real_split == "train" else "train"
    data = DataConfig(name=real, root=real_root, size=inp.ext.size or inp.width, channels=inp.ext.channels)
    try:
        source = load_source(data, other)
    except SynthkitError as exc:
        return None, f"the {other} split of {real} could not be read ({exc})"
    n_ref = min(inp.n_syn, len(source))
    if n_ref <= cfg.k:
        return None, f"the {other} split of {real} holds {len(source)} images, too few for k={cfg.k}"
    keep = torch.randperm(len(source), generator=torch.Generator().manual_seed(cfg.seed + 1))[:n_ref]
    keep = keep.sort().values
    labels = source.labels[keep] if source.labels is not None else None
    side = TensorSide(source.images[keep], labels)
    held = stream_features(side.batches(cfg.batch_size), n_ref, inp.ext, inp.dev, batch_size=cfg.batch_size)
    desc = {
        "kind": "held-out split",
        "held_out": {"source": real, "split": other, "count": n_ref, "of": len(source)},
        "real": {"split": cfg.real_split, "count": int(inp.f_real.shape[0])},
    }
    held_labels = labels if inp.real_y is not None else None
    return Reference(held.features, held_labels, inp.f_real, inp.real_y, desc), ""


def _disjoint_split(
    inp: _Inputs, cfg: AuditConfig, why_split: str
) -> tuple[Reference | None, dict[str, Any]]:
    """The real set cut in two disjoint parts (seeded): the held-out part, of the synthetic set's size but
    at most half, against the rest; none when either part would hold ``k`` images or fewer."""
    f_real, real_y = inp.f_real, inp.real_y
    n_real = f_real.shape[0]
    n_ref = min(inp.n_syn, n_real // 2)
    if n_ref <= cfg.k or n_real - n_ref <= cfg.k:
        why = f"{n_real} real images are too few to split into two parts of more than k={cfg.k}"
        return None, {"kind": "none", "why": why}
    perm = torch.randperm(n_real, generator=torch.Generator().manual_seed(cfg.seed + 2))
    held_idx, rest_idx = perm[:n_ref].sort().values, perm[n_ref:].sort().values
    desc = {
        "kind": "disjoint split of the real set",
        "why": why_split,
        "held_out": {"count": n_ref, "seed": cfg.seed + 2},
        "real": {"count": int(rest_idx.numel())},
    }
    labels = (real_y[held_idx], real_y[rest_idx]) if real_y is not None else (None, None)
    dev = inp.dev
    ref = Reference(f_real[held_idx.to(dev)], labels[0], f_real[rest_idx.to(dev)], labels[1], desc)
    return ref, desc


def _figures(
    f_real: torch.Tensor,
    real_y: torch.Tensor | None,
    query: torch.Tensor,
    cfg: AuditConfig,
    classes: tuple[str, ...] | None,
    real_knn: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The figures the gates compare, of ``query`` against ``f_real``: FID, KID, PRDC, the memorisation
    suspect fraction and the class view."""
    scores, _, (nn_distance, nn_index, real_nn1), _, cover = _prdc_and_neighbours(
        f_real, query, cfg, real_knn
    )
    mem = memorisation.memorisation_from_neighbours(
        nn_distance, nn_index, real_nn1, threshold=cfg.memorisation_threshold, top=0
    )
    kid_mean, _, _ = _kid(f_real, query, cfg)
    out: dict[str, Any] = {
        "count": int(query.shape[0]),
        "real_count": int(f_real.shape[0]),
        fid.FID: fid.fid(f_real, query, cfg.chunk_size),
        fid.KID_MEAN: kid_mean,
        **scores,
        "memorisation_fraction": mem["suspect_fraction"],
        "classes": None,
    }
    if real_y is not None:
        out["classes"], _ = _class_view(f_real, real_y, cover, query, classes)
    return out


def _extractor_quality(ext: FeatureExtractor, ref: Reference | None) -> dict[str, Any]:
    """How well the feature space tells real classes apart: weighted-kNN accuracy (k=20, t=0.1) of the
    held-out real images against the reference's real images, and a classifier's own test accuracy."""
    quality: dict[str, Any] = {
        "id": ext.ident,
        "kind": ext.kind,
        "knn_accuracy": None,
        "num_classes": None,
        "classifier_test_accuracy": ext.info.get("test_accuracy"),
        "classifier_classes": ext.info.get("num_classes"),
    }
    if ref is not None and ref.held_labels is not None and ref.real_labels is not None:
        n = int(max(ref.real_labels.max(), ref.held_labels.max())) + 1
        pred = knn_predict(
            ref.real, ref.real_labels, ref.held, k=min(20, ref.real.shape[0]), temperature=0.1, num_classes=n
        ).cpu()
        quality["knn_accuracy"] = (pred == ref.held_labels).double().mean().item()
        quality["num_classes"] = n
        quality["knn"] = "weighted kNN (k=20, t=0.1, cosine) of the held-out real images"
    return quality


def _attach_reference(metrics: dict[str, dict[str, Any]], reference: dict[str, Any]) -> None:
    """Each figure with a reference gets it (``reference``), and, where the reference was scored at another
    size or against another part of the real data, the synthetic figure at that size (``matched``)."""
    ref, syn = reference["figures"], reference["synthetic"]
    keys = {k: k for k in (fid.FID, fid.KID_MEAN, prdc.PRECISION, prdc.RECALL, prdc.DENSITY, prdc.COVERAGE)}
    keys["memorisation_suspects"] = "memorisation_fraction"
    for name, key in keys.items():
        if name in metrics:
            metrics[name]["reference"] = ref[key]
            if syn is not None:
                metrics[name]["matched"] = syn[key]
    for name in ("classes_generated", "min_class_coverage"):
        if name in metrics and ref["classes"] is not None:
            metrics[name]["reference"] = ref["classes"][name]
            if syn is not None and syn["classes"] is not None:
                metrics[name]["matched"] = syn["classes"][name]


def _real_row(real_y: torch.Tensor | None, n_real: int, cfg: AuditConfig) -> dict[str, Any]:
    """The real images the report shows for comparison: the first of each class (labelled data), else a
    seeded draw."""
    if real_y is not None:
        first: dict[int, int] = {}
        for i, y in enumerate(real_y.tolist()):
            first.setdefault(int(y), i)
        keys = sorted(first)[: 2 * cfg.grid_per_row]
        return {"indices": [first[c] for c in keys], "labels": keys}
    pick = torch.randperm(n_real, generator=torch.Generator().manual_seed(cfg.seed + 4))[: cfg.grid_per_row]
    return {"indices": sorted(pick.tolist()), "labels": None}


def _condition_names(metas: list[dict], classes: tuple[str, ...] | None) -> dict[int, str] | None:
    """Class names of the conditions, when every conditioned sample was conditioned on a true label."""
    sources = {m.get("condition_source") for m in metas if isinstance(m.get("condition"), int)}
    if classes is None or sources != {"labels"}:
        return None
    return dict(enumerate(classes))


def _gates(
    metrics: dict[str, dict[str, Any]],
    details: dict[str, Any],
    reference: dict[str, Any],
    real_broken: float,
    cfg: AuditConfig,
) -> list[Gate]:
    """One gate per check, each reading a synthetic figure against the reference
    (:mod:`synthkit.audit_verdict`)."""
    ref, syn = reference.get("figures"), reference.get("synthetic")
    why_none = reference["desc"].get("why", "")
    mem_ref = ref["memorisation_fraction"] if ref else None
    gates = [
        audit_verdict.broken_gate(details[broken.BROKEN]["fraction"], real_broken),
        audit_verdict.memorisation_gate(
            details[memorisation.MEMORISATION]["suspect_fraction"], mem_ref, cfg.memorisation_threshold
        ),
    ]
    figure = {
        k: syn[k] if syn else metrics[k]["value"] for k in (prdc.PRECISION, prdc.DENSITY, prdc.COVERAGE)
    }
    gates.append(
        audit_verdict.precision_gate(
            figure[prdc.PRECISION],
            ref[prdc.PRECISION] if ref else None,
            figure[prdc.DENSITY],
            ref[prdc.DENSITY] if ref else None,
            why_none,
        )
    )
    coverage_ref = ref[prdc.COVERAGE] if ref else None
    gates.append(audit_verdict.ratio_gate(prdc.COVERAGE, figure[prdc.COVERAGE], coverage_ref, why_none))
    gates.append(
        audit_verdict.conditions_gate(
            details[conditions_coverage.CONDITION_COVERAGE],
            details.get(conditions_coverage.CONDITION_SEPARABILITY),
            (syn or {}).get("classes") or details.get(conditions_coverage.CLASS_COVERAGE),
            ref["classes"] if ref else None,
        )
    )
    gates.append(audit_verdict.extractor_gate(reference["extractor_quality"]))
    return gates


@dataclass
class _Inputs:
    """Stage 1's result: both sets streamed through one extractor, and what the later stages read."""

    set_dir: str
    local: Path | None
    manifest: dict[str, Any]
    syn_side: SetSide
    real_side: SetSide | TensorSide
    ext: FeatureExtractor
    chosen_by: str
    width: int
    classes: tuple[str, ...] | None
    real_desc: dict[str, Any]
    f_syn: torch.Tensor
    f_real: torch.Tensor
    metas: list[dict[str, Any]]
    real_y: torch.Tensor | None
    conversions: dict[str, Any]
    hardness_stream: _HardnessStream | None
    bad_counter: broken.BrokenCounter
    real_bad: broken.BrokenCounter
    dev: torch.device

    @property
    def n_syn(self) -> int:
        return self.syn_side.count

    @property
    def n_real(self) -> int:
        return self.real_side.count


@dataclass
class _Scores:
    """What the metric stages fill in: the report's metrics, details and methods, and the per-sample values
    the report's images are chosen by."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    knn_cache: dict[str, Any] = field(
        default_factory=dict
    )  # the real k-NN distances, reused by the reference
    cover: dict[str, Any] = field(default_factory=dict)
    ratio: np.ndarray | None = None
    nn_distance: torch.Tensor | None = None
    predicted: list[int] | None = None  # per sample, its kNN class (exact PRDC only: all samples)
    pair_idx: list[tuple[int, int]] = field(default_factory=list)
    feature_sims: list[float] = field(default_factory=list)
    hardness_values: np.ndarray | None = None
    conditions: list[int | None] = field(default_factory=list)


class _Clock:
    """Each stage's time, one log line per stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now
        logger.info(
            "audit: %s done in %.1f s (peak RSS so far %s MiB)", name, self.timings[name], _peak_mib()
        )


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
    device: str | None = None,
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
        device: overrides ``config.device`` (whose default, None, is CUDA when available, else the CPU).

    Returns:
        The report dict, as written to ``report.json``.
    """
    cfg = config or AuditConfig()
    out = Path(out_dir)
    _check_out(str(shards), out)
    dev = resolve_device(device if device is not None else cfg.device, "--device")
    clock = _Clock()
    # 1. Inputs: both sets streamed through one extractor
    inp = _read_inputs(
        str(shards), real, real_root, cfg, dev, encoder_run, classifier, inception_weights, clock
    )
    # 2. Feature-space metrics, one family at a time
    s = _Scores()
    _fid_kid(inp, cfg, s)
    clock.step("fid_kid")
    _prdc_memorisation(inp, cfg, s)
    clock.step("prdc_memorisation")
    _uniformity(inp, cfg, s)
    _class_coverage(inp, s)
    # 3. Pairs, hardness, conditions, broken images
    _pair_metrics(inp, s)
    _hardness_metrics(inp, s)
    _condition_metrics(inp, s)
    _broken_metric(inp, s)
    _separability(inp, cfg, s)
    clock.step("other_metrics")
    # 4. The real-vs-real reference in the same feature space, and the gates that read against it
    reference, gates = _reference_and_gates(inp, cfg, real, real_root, s)
    clock.step("reference_and_gates")
    # 5. The report, then its rendering (the images it shows read again from the shards that hold them)
    report = _assemble(inp, cfg, s, reference, gates, clock.timings)
    html = _render(report, inp, s)
    clock.step("render")  # the last timing: report.json holds them all
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / REPORT_HTML, html)
    write_json_atomic(out / REPORT_JSON, report, indent=2)
    return report


def _check_out(set_dir: str, out: Path) -> None:
    """The report's directory: never inside the audited set (a URL stays text: Path would mangle it)."""
    local = None if is_url(set_dir) else Path(set_dir).resolve()
    if local is not None and local in (out.resolve(), *out.resolve().parents):
        raise AuditError(
            f"refusing to write the audit into the shard set {set_dir}; choose a directory outside"
        )
    check_output_dir(out)


def _extractor_for(
    manifest: dict[str, Any],
    cfg: AuditConfig,
    encoder_run: str | os.PathLike[str] | None,
    classifier: str | os.PathLike[str] | None,
    inception_weights: str | os.PathLike[str] | None,
) -> tuple[str, str | os.PathLike[str] | None, str]:
    """The extractor's kind, the encoder run it (and recomputed hardness) uses, and why it was chosen."""
    kind, chosen_by = cfg.extractor, f"extractor: {cfg.extractor}"
    if kind == AUTO:
        return choose_extractor(
            manifest, encoder_run=encoder_run, classifier=classifier, inception_weights=inception_weights
        )
    if kind == "encoder" and encoder_run is None:
        # the encoder of the run that made the set, as `auto` would choose it
        found, run, why = choose_extractor(manifest)
        if found != "encoder":
            raise AuditError(
                "--extractor encoder needs a run directory (--encoder RUN_DIR): the set's manifest names no "
                "run whose final/ is on this machine"
            )
        return kind, run, f"extractor: encoder; {why.removeprefix('default: ')}"
    return kind, encoder_run, chosen_by


def _read_inputs(
    set_dir: str,
    real: str,
    real_root: str | None,
    cfg: AuditConfig,
    dev: torch.device,
    encoder_run: str | os.PathLike[str] | None,
    classifier: str | os.PathLike[str] | None,
    inception_weights: str | os.PathLike[str] | None,
    clock: _Clock,
) -> _Inputs:
    """Stage 1: the synthetic set's manifest and image size choose the extractor; both sets are streamed
    through it, broken images counted and hardness recomputed on the way."""
    syn_side = open_side(set_dir, "synthetic", cfg.max_samples)
    manifest = syn_side.manifest
    _, width, _channels = syn_side.peek()
    kind, encoder_run, chosen_by = _extractor_for(manifest, cfg, encoder_run, classifier, inception_weights)
    ext: FeatureExtractor = load_extractor(
        kind,
        encoder_run=encoder_run,
        classifier=classifier,
        inception_weights=inception_weights,
        pixels_shape=(width, _channels),
    )
    real_side, classes, real_desc = _open_real(
        real, real_root, cfg.real_split, ext.size or width, ext.channels, cfg.max_real, cfg.seed
    )
    n_syn, n_real = syn_side.count, real_side.count
    if min(n_syn, n_real) <= cfg.k:
        raise AuditError(f"an audit with k={cfg.k} needs more than {cfg.k} synthetic and real images")
    hardness_stream = _HardnessStream(encoder_run, n_real, cfg.seed) if encoder_run is not None else None
    real_bad = broken.BrokenCounter(saturated_fraction=cfg.saturated_fraction, max_listed=0)
    real_hooks: list[Any] = [lambda b: real_bad.add(b.images, b.start)]
    if hardness_stream is not None:
        real_hooks.append(hardness_stream.capture)
    real_stream = stream_features(
        real_side.batches(cfg.batch_size), n_real, ext, dev, batch_size=cfg.batch_size, hooks=real_hooks
    )
    clock.step("real_features")
    bad_counter = broken.BrokenCounter(saturated_fraction=cfg.saturated_fraction, max_listed=MAX_LISTED)
    hooks: list[Any] = [lambda b: bad_counter.add(b.images, b.start)]
    if hardness_stream is not None:
        hooks.append(hardness_stream.add)
    syn_stream = stream_features(
        syn_side.batches(cfg.batch_size), n_syn, ext, dev, batch_size=cfg.batch_size, hooks=hooks
    )
    clock.step("synthetic_features")
    labels = real_stream.labels
    real_y = torch.tensor(labels, dtype=torch.int64) if all(c is not None for c in labels) else None
    real_desc["labels"] = real_y is not None
    conversions = {
        name: {"from": _chw_text(st.shape), "to": _chw_text(st.prepared)}
        if st.shape is not None and st.prepared is not None and st.shape != st.prepared
        else None
        for name, st in (("synthetic", syn_stream), ("real", real_stream))
    }
    local = None if is_url(set_dir) else Path(set_dir).resolve()
    return _Inputs(
        set_dir, local, manifest, syn_side, real_side, ext, chosen_by, width, classes, real_desc,
        syn_stream.features, real_stream.features, syn_stream.metas, real_y, conversions, hardness_stream,
        bad_counter, real_bad, dev,
    )  # fmt: skip


def _fid_kid(inp: _Inputs, cfg: AuditConfig, s: _Scores) -> None:
    """FID (exact: float64 moments of all features) and KID."""
    xid, f_real, f_syn = inp.ext.ident, inp.f_real, inp.f_syn
    s.metrics[fid.FID] = _score(
        fid.fid(f_real, f_syn, cfg.chunk_size), xid, "Frechet distance (lower is closer)"
    )
    kid_mean, kid_std, kid_how = _kid(f_real, f_syn, cfg)
    s.metrics[fid.KID_MEAN] = _score(kid_mean, xid, f"KID, {kid_how}")
    s.metrics[fid.KID_STD] = _score(
        kid_std,
        xid,
        "KID, std between the subsets"
        if kid_std is not None
        else "KID's std: not measurable (set too small)",
    )
    s.methods["features"] = {"device": str(inp.dev), "streamed": True, "batch_size": cfg.batch_size}
    s.methods["fid"] = {
        "exact": True,
        "method": "float64 mean and covariance of all features (streamed sums)",
    }
    s.methods["kid"] = {"exact": True, "method": f"{kid_how} (KID's definition)"}


def _prdc_memorisation(inp: _Inputs, cfg: AuditConfig, s: _Scores) -> None:
    """Precision, recall, density, coverage and memorisation, from one set of nearest neighbours."""
    xid = inp.ext.ident
    scores, prdc_how, (nn_distance, nn_index, real_nn1), mem_how, s.cover = _prdc_and_neighbours(
        inp.f_real, inp.f_syn, cfg, s.knn_cache
    )
    s.methods["prdc"], s.methods["memorisation"] = prdc_how, mem_how
    texts = {
        prdc.PRECISION: "share of samples on the real manifold (fidelity)",
        prdc.RECALL: "share of real images on the samples' manifold (diversity)",
        prdc.DENSITY: "real-neighbourhood density of samples, 1 = like real (fidelity)",
        prdc.COVERAGE: "share of real neighbourhoods holding a sample (diversity)",
    }
    for key, value in scores.items():
        s.metrics[key] = _score(value, xid, texts[key], k=cfg.k, estimated=_estimated(prdc_how, key))
        if not prdc_how["exact"]:
            s.metrics[key]["std"] = prdc_how["std"][key]
    mem = memorisation.memorisation_from_neighbours(
        nn_distance, nn_index, real_nn1, threshold=cfg.memorisation_threshold, top=cfg.top
    )
    s.ratio = (nn_distance / real_nn1[nn_index].clamp_min(1e-12)).numpy()
    s.nn_distance = nn_distance
    s.details[memorisation.MEMORISATION] = {**mem, "method": mem_how}
    s.metrics["memorisation_suspects"] = _score(
        mem["suspect_count"],
        xid,
        f"samples nearer a real image than {cfg.memorisation_threshold} x its nearest real neighbour",
        fraction=mem["suspect_fraction"],
        estimated=_estimated(mem_how),
    )


def _uniformity(inp: _Inputs, cfg: AuditConfig, s: _Scores) -> None:
    """Wang & Isola uniformity of each set, on seeded subsamples."""
    xid = inp.ext.ident
    u_syn = alignment_uniformity.uniformity(
        _subsample(inp.f_syn, cfg.uniformity_max, cfg.seed), chunk_size=cfg.chunk_size
    )
    u_real = alignment_uniformity.uniformity(
        _subsample(inp.f_real, cfg.uniformity_max, cfg.seed + 1), chunk_size=cfg.chunk_size
    )
    s.methods["uniformity"] = {
        "exact": max(inp.n_syn, inp.n_real) <= cfg.uniformity_max,
        "method": f"all pairs of a seeded subsample of at most {cfg.uniformity_max} points per set",
    }
    s.metrics["uniformity_synthetic"] = _score(u_syn, xid, "Wang & Isola uniformity (t=2) of the samples")
    s.metrics["uniformity_real"] = _score(u_real, xid, "the same for the real images, for reference")


def _class_coverage(inp: _Inputs, s: _Scores) -> None:
    """With labelled real data: the classes the samples are assigned to by kNN, and each class's coverage."""
    if inp.real_y is None:
        return
    xid = inp.ext.ident
    num_classes = int(inp.real_y.max()) + 1
    cc, pred = _class_view(inp.f_real, inp.real_y, s.cover, inp.f_syn, inp.classes)
    ri = s.cover["real_index"]
    if s.cover["fake_index"] is None:
        s.predicted = pred.tolist()
    s.details[conditions_coverage.CLASS_COVERAGE] = {
        **cc,
        "extractor": xid,
        "predicted_by": "weighted kNN, k=20" + ("" if ri is None else " on PRDC's first sample"),
    }
    s.metrics["classes_generated"] = _score(
        cc["classes_generated"], xid, f"classes (of {num_classes}) the samples are assigned to by kNN"
    )
    s.metrics["min_class_coverage"] = _score(
        cc["min_class_coverage"],
        xid,
        "coverage of the worst class",
        estimated=None if ri is None else "on PRDC's first sample",
    )


def _pair_metrics(inp: _Inputs, s: _Scores) -> None:
    """Positive pairs: their feature similarity (and its trend over generator steps) and alignment."""
    metas, xid = inp.metas, inp.ext.ident
    s.pair_idx = _find_pairs(metas)
    if not s.pair_idx:
        s.details["pairs"] = {"count": 0}
        return
    a_idx = torch.tensor([a for a, _ in s.pair_idx], device=inp.dev)
    b_idx = torch.tensor([b for _, b in s.pair_idx], device=inp.dev)
    steps = [_pair_step(metas[a], metas[b]) for a, b in s.pair_idx]
    s.feature_sims = pairs.pair_cosine(inp.f_syn[a_idx], inp.f_syn[b_idx]).tolist()
    recorded = [_number(metas[a], "pair_similarity") for a, _ in s.pair_idx]
    known = [(v, st) for v, st in zip(recorded, steps, strict=True) if v is not None]
    s.details["pairs"] = {
        "count": len(s.pair_idx),
        "feature_similarity": {**pairs.pair_similarity_summary(s.feature_sims, steps), "extractor": xid},
        "recorded_similarity": pairs.pair_similarity_summary(*zip(*known, strict=True)) if known else None,
    }
    s.metrics["pair_similarity"] = _score(
        float(np.mean(s.feature_sims)), xid, "mean cosine similarity of pairs"
    )
    s.metrics["alignment_pairs"] = _score(
        alignment_uniformity.alignment(inp.f_syn[a_idx], inp.f_syn[b_idx]),
        xid,
        "Wang & Isola alignment of pairs",
    )
    trend = s.details["pairs"]["feature_similarity"]["trend"]
    if trend is not None:
        s.metrics["pair_similarity_trend"] = _score(
            trend["slope_per_1k_steps"], xid, "change of pair similarity per 1,000 generator steps"
        )


def _hardness_metrics(inp: _Inputs, s: _Scores) -> None:
    """Hardness as the samples record it, and recomputed under an encoder when a run is given."""
    recorded_h = [_number(m, "hardness") for m in inp.metas]
    hard: dict[str, Any] = {}
    if all(h is not None for h in recorded_h):
        s.hardness_values = np.asarray(recorded_h, dtype=np.float64)
        hard["recorded"] = {**describe(recorded_h), "extractor": None, "source": "sample metadata"}
        s.metrics["hardness_recorded_mean"] = _score(hard["recorded"]["mean"], None, "mean recorded hardness")
    if inp.hardness_stream is not None:
        values, enc_id = inp.hardness_stream.finish(), inp.hardness_stream.ext.ident
        s.hardness_values = values.astype(np.float64)
        hard["encoder"] = {**describe(values.tolist()), "extractor": enc_id, "source": "recomputed NT-Xent"}
        s.metrics["hardness_mean"] = _score(
            float(values.mean()), enc_id, "mean per-sample NT-Xent under the encoder"
        )
    s.details["hardness"] = hard or None


def _condition_metrics(inp: _Inputs, s: _Scores) -> None:
    """Condition counts and their entropy."""
    metas = inp.metas
    s.conditions = [m.get("condition") if isinstance(m.get("condition"), int) else None for m in metas]
    coverage = conditions_coverage.condition_coverage(s.conditions, _num_conditions(metas, inp.manifest))
    s.details[conditions_coverage.CONDITION_COVERAGE] = coverage
    if coverage["conditions_seen"]:
        s.metrics["condition_entropy"] = _score(
            coverage["normalized_entropy"],
            None,
            "entropy of condition counts / log(number of conditions); 1 = uniform",
        )


def _separability(inp: _Inputs, cfg: AuditConfig, s: _Scores) -> None:
    """How separable the samples' conditions are in feature space (leave-one-out kNN)."""
    xid = inp.ext.ident
    separability = conditions_coverage.condition_separability(inp.f_syn, s.conditions, seed=cfg.seed)
    if separability is not None:
        s.details[conditions_coverage.CONDITION_SEPARABILITY] = {**separability, "extractor": xid}
        s.metrics["condition_separability"] = _score(
            separability["accuracy"],
            xid,
            f"leave-one-out kNN accuracy of the samples' conditions (chance {separability['chance']:.3f})",
        )


def _broken_metric(inp: _Inputs, s: _Scores) -> None:
    """Broken images, counted per batch; report.json lists the first MAX_LISTED indices per reason, even
    for a set all blank."""
    bad = inp.bad_counter.result()
    s.details[broken.BROKEN] = bad
    s.metrics["broken"] = _score(
        bad["broken"], None, "constant, saturated or non-finite images", fraction=bad["fraction"]
    )


def _reference_and_gates(
    inp: _Inputs, cfg: AuditConfig, real: str, real_root: str | None, s: _Scores
) -> tuple[dict[str, Any], list[Gate]]:
    """The real-vs-real reference in the same feature space (each figure gets its reference), then the
    gates that read against it."""
    ref, ref_desc = _open_reference(inp, cfg, real, real_root)
    reference: dict[str, Any] = {"desc": ref_desc, "figures": None, "synthetic": None}
    if ref is not None:
        reference["figures"] = _figures(ref.real, ref.real_labels, ref.held, cfg, inp.classes, s.knn_cache)
        n_ref = ref.held.shape[0]
        if ref.real is inp.f_real and n_ref >= inp.n_syn:
            reference["synthetic"] = None  # the synthetic figures above are already at the reference's size
        else:
            matched = _subsample(inp.f_syn, n_ref, cfg.seed + 3)
            reference["synthetic"] = _figures(
                ref.real, ref.real_labels, matched, cfg, inp.classes, s.knn_cache
            )
        _attach_reference(s.metrics, reference)
    reference["extractor_quality"] = _extractor_quality(inp.ext, ref)
    real_broken = inp.real_bad.result()["fraction"]
    reference["real_broken_fraction"] = real_broken
    s.metrics["broken"]["reference"] = real_broken  # a fraction, like the metric's "fraction"
    gates = _gates(s.metrics, s.details, reference, real_broken, cfg)
    if reference["synthetic"] is None and reference["figures"] is not None:
        reference["synthetic"] = {"same_as": "metrics (the synthetic set is already at the reference's size)"}
    s.details["real_row"] = _real_row(inp.real_y, inp.n_real, cfg)
    return reference, gates


def _assemble(
    inp: _Inputs,
    cfg: AuditConfig,
    s: _Scores,
    reference: dict[str, Any],
    gates: list[Gate],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The report dict (``report.json``)."""
    producer = inp.manifest.get("producer")
    return {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "shards": {
            "dir": inp.set_dir if inp.local is None else str(inp.local),
            "name": inp.manifest.get("name"),
            "total": inp.manifest.get("total"),
            "audited": inp.n_syn,
            "producer": producer.get("name") if isinstance(producer, dict) else producer,
            "hashes": producer.get("hashes") if isinstance(producer, dict) else None,
            "by_kind": dict(Counter(str(m.get("kind")) for m in inp.metas)),
        },
        "real": inp.real_desc,
        "extractor": {**inp.ext.describe(), "chosen_by": inp.chosen_by},
        "conversions": inp.conversions,
        "verdict": audit_verdict.verdict(gates),
        "reference": reference,
        "methods": s.methods,
        "metrics": s.metrics,
        "details": s.details,
        "config": asdict(cfg),
        "created_by": created_by(),
        "timings_s": timings,
    }


def _render(report: dict[str, Any], inp: _Inputs, s: _Scores) -> str:
    """``report.html``: the images it shows are read again from only the shards that hold them."""
    want_syn, want_real = shown_indices(report, s.conditions, s.hardness_values, s.pair_idx)
    assert s.ratio is not None and s.nn_distance is not None
    images = AuditImages(
        synthetic=inp.syn_side.fetch(want_syn),
        real=inp.real_side.fetch(want_real),
        conditions=s.conditions,
        hardness=s.hardness_values,
        pairs=s.pair_idx,
        values={
            "memorisation_ratio": s.ratio,
            "nearest_real_distance": s.nn_distance.numpy(),
            "pair_similarity": np.asarray(s.feature_sims if s.pair_idx else []),
        },
        predicted=s.predicted,
        classes=inp.classes,
        condition_names=_condition_names(inp.metas, inp.classes),
    )
    return render_report(report, images)

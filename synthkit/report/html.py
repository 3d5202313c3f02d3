"""The audit report as one self-contained HTML file: inline CSS, images as base64 ``data:`` URIs.

Nothing is loaded from the network, so the file reads offline and can be mailed or archived as is. Sections
carry stable ids (:data:`SECTIONS`) that tests and links rely on. Every string that comes from a shard set
(metadata is untrusted) is HTML-escaped.

The report draws only a few images; :func:`shown_indices` says which, from the report and per-sample
metadata alone, so a streamed audit reads just those again (the one definition the renderer follows).
Every score says whether it is exact or how it was estimated (``report["methods"]``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from synthkit.images import rows_grid


@dataclass
class AuditImages:
    """What the HTML report draws: uint8 H x W x C images by index (at least those :func:`shown_indices`
    names; an N x H x W x C array does too), per-sample conditions, hardness, pairs and values."""

    synthetic: Mapping[int, np.ndarray] | np.ndarray
    real: Mapping[int, np.ndarray] | np.ndarray
    conditions: list[Any]
    hardness: np.ndarray | None
    pairs: list[tuple[int, int]]
    values: dict[str, np.ndarray]
    predicted: list[int] | None = None  # per sample, the real class its kNN vote gives (None: not computed)
    classes: tuple[str, ...] | None = None  # class names of the real data
    condition_names: dict[int, str] | None = field(default=None)  # a condition's class, for label conditions


# Rows of the per-condition grid at most: a set whose metadata gives every sample its own condition would
# otherwise draw (and make a streamed audit read again) every sample.
MAX_GRID_ROWS = 64

SECTIONS = (
    "verdict",
    "summary",
    "extractor",
    "metrics",
    "grids",
    "hardest",
    "pairs",
    "histograms",
    "memorisation",
    "broken",
    "classes",
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.grid{image-rendering:pixelated;border:1px solid #ccc;max-width:100%}
figure{display:inline-block;margin:.4em 1em .4em 0;vertical-align:top}figcaption{font-size:.85em;color:#555}
.note{color:#666;font-size:.9em}code{background:#f3f3f3;padding:0 .2em}
.badge{display:inline-block;padding:.1em .5em;border-radius:.3em;font-weight:bold;color:#fff;min-width:3em;
text-align:center}.pass{background:#2e7d32}.warn{background:#e08a00}.fail{background:#c62828}
.skip{background:#888}#verdict h2 .badge{font-size:1em}th.row{white-space:nowrap;vertical-align:middle}
figure.pair{margin:0 .3em 0 0}figure.pair figcaption{text-align:center;font-weight:bold}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: Image.Image, alt: str, cls: str = "grid") -> str:
    return f'<img class="{cls}" alt="{_esc(alt)}" src="{_png_uri(image)}">'


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _esc(value)


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _rendered(fig: Any) -> Image.Image:
    """A matplotlib figure as an RGB image; the figure is closed."""
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _histogram(values: np.ndarray, title: str, xlabel: str) -> Image.Image:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
    finite = values[np.isfinite(values)]
    ax.hist(finite, bins=40, color="#4a78b5")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    return _rendered(fig)


def _bars(labels: list[str], values: list[float], title: str) -> Image.Image:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 2.8), dpi=90)
    ax.bar(range(len(values)), values, color="#4a78b5")
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=60, fontsize=7)
    ax.set_title(title, fontsize=10)
    return _rendered(fig)


def _figure(image: Image.Image, caption: str, cls: str = "plot") -> str:
    return f"<figure>{_img(image, caption, cls)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _section(sid: str, title: str, body: str, badge: str | None = None) -> str:
    head = _esc(title) + (f" {_badge(badge)}" if badge else "")
    return f'<section id="{sid}"><h2>{head}</h2>\n{body}\n</section>'


def _badge(status: str) -> str:
    return f'<span class="badge {_esc(status)}">{_esc(status)}</span>'


# the figures the verdict's table sets next to their real-vs-real reference, in this order
_VERDICT_FIGURES = (
    ("precision", "precision (fidelity)"),
    ("recall", "recall (diversity)"),
    ("density", "density"),
    ("coverage", "coverage"),
    ("fid", "FID"),
    ("kid_mean", "KID"),
)


def _verdict(report: dict[str, Any]) -> str:
    """The answer first: the overall status, one row per gate, and the key figures next to their
    real-vs-real reference."""
    v, ref = report["verdict"], report["reference"]
    rows = "".join(
        f"<tr><td>{_badge(g['status'])}</td><th class='row'>{_esc(g['name'])}</th>"
        f"<td>{_esc(g['reason'])}</td></tr>"
        for g in v["gates"]
    )
    out = f"<table id='gates'><tr><th>status</th><th>gate</th><th>why</th></tr>{rows}</table>"
    desc = ref["desc"]
    if ref.get("figures") is None:
        return out + f"<p class='note'>No real-vs-real reference: {_esc(desc.get('why', ''))}.</p>"
    figs, syn = ref["figures"], ref.get("synthetic")
    matched = syn is not None and "same_as" not in syn
    head = "<tr><th>figure</th><th>synthetic</th>"
    head += "<th>synthetic at the reference's size</th>" if matched else ""
    head += "<th>real vs real (reference)</th></tr>"
    body = []
    for key, label in _VERDICT_FIGURES:
        m = report["metrics"].get(key)
        if m is None:
            continue
        cells = f"<td class='num'>{_fmt(m['value'])}</td>"
        cells += f"<td class='num'>{_fmt(syn[key])}</td>" if matched else ""
        body.append(f"<tr><td>{_esc(label)}</td>{cells}<td class='num'>{_fmt(figs[key])}</td></tr>")
    held = desc.get("held_out", {})
    where = (
        f"{held.get('count')} held-out real images ({desc['kind']}"
        + (f": {held['source']} {held['split']}" if "source" in held else "")
        + f") scored against {figs['real_count']} real images, in the same feature space"
    )
    return (
        out
        + f"<p class='note'>Reference: {_esc(where)}.</p><table id='reference'>{head}{''.join(body)}</table>"
    )


def _extractor(report: dict[str, Any]) -> str:
    """The feature space and how well it tells real classes apart (a weak one makes every figure weak)."""
    e, q = report["extractor"], report["reference"]["extractor_quality"]
    gate = next(g for g in report["verdict"]["gates"] if g["name"] == "extractor")
    rows = [
        ("extractor", f"{e['id']} ({e['kind']}, {e['feature_dim']}-D)"),
        ("chosen by", str(e.get("chosen_by", "extractor given"))),
        (
            "kNN accuracy of held-out real images",
            "not measured (no labels or no reference)"
            if q["knn_accuracy"] is None
            else f"{q['knn_accuracy']:.3f} with {q['num_classes']} classes "
            f"(chance {1 / q['num_classes']:.3f})",
        ),
    ]
    if q.get("classifier_test_accuracy") is not None:
        rows.append(("classifier's test accuracy", f"{q['classifier_test_accuracy']:.3f}"))
    table = "".join(f"<tr><th>{_esc(a)}</th><td>{_esc(b)}</td></tr>" for a, b in rows)
    return f"<p>{_badge(gate['status'])} {_esc(gate['reason'])}</p><table>{table}</table>"


def _summary(report: dict[str, Any]) -> str:
    s, r, e = report["shards"], report["real"], report["extractor"]
    conv = [f"{k}: {v['from']} -> {v['to']}" for k, v in report["conversions"].items() if v]
    rows = [
        ("shard set", f"{s['dir']} ({s['audited']} of {s['total']} samples; producer {s['producer']})"),
        ("kinds", ", ".join(f"{k}: {v}" for k, v in s["by_kind"].items())),
        ("real", json.dumps({k: v for k, v in r.items() if k != "kind"}, sort_keys=True)),
        ("extractor", f"{e['id']} ({e['kind']}, {e['feature_dim']}-D, sha256 {e['sha256']})"),
        ("chosen by", str(e.get("chosen_by", "extractor given"))),
        ("conversions", "; ".join(conv) if conv else "none (images already fit the extractor)"),
        ("reference", json.dumps(report["reference"]["desc"], sort_keys=True)),
        ("synthkit", json.dumps(report["created_by"], sort_keys=True)),
    ]
    return "<table>" + "".join(f"<tr><th>{_esc(a)}</th><td>{_esc(b)}</td></tr>" for a, b in rows) + "</table>"


def _metrics_table(report: dict[str, Any]) -> str:
    head = (
        "<tr><th>metric</th><th>value</th><th>real vs real</th><th>extractor</th><th>computed</th>"
        "<th>meaning</th></tr>"
    )
    rows = []
    for name, m in report["metrics"].items():
        extractor = m["extractor"] if m["extractor"] is not None else "none (pixels / metadata)"
        how = f"estimated: {m['estimated']}" if m.get("estimated") else "exact"
        share = "fraction" in m  # a count: shown with its share, and the reference is a share
        value = _fmt(m["value"]) + (f" ({_pct(m['fraction'])})" if share else "")
        ref = m.get("reference")
        ref_text = "" if ref is None else (_pct(ref) if share else _fmt(ref))
        if m.get("matched") is not None:
            matched = _pct(m["matched"]) if share else _fmt(m["matched"])
            ref_text += f" <span class='note'>(samples at its size: {matched})</span>"
        rows.append(
            f"<tr><td><code>{_esc(name)}</code></td><td class='num'>{value}</td>"
            f"<td class='num'>{ref_text}</td>"
            f"<td>{_esc(extractor)}</td><td>{_esc(how)}</td><td>{_esc(m['description'])}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>" + _methods_table(report)


def _methods_table(report: dict[str, Any]) -> str:
    """How each group of scores was computed: exact, or the estimate, its parameters and measured error."""
    methods = report.get("methods")
    if not methods:
        return ""
    rows = []
    for name, how in methods.items():
        verdict = "" if "exact" not in how else ("exact" if how["exact"] else "estimated")
        shown = {k: v for k, v in how.items() if k not in ("exact", "per_draw")}
        text = "; ".join(
            f"{k}: {json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}" for k, v in shown.items()
        )
        rows.append(
            f"<tr><td><code>{_esc(name)}</code></td><td>{_esc(verdict)}</td><td>{_esc(text)}</td></tr>"
        )
    return (
        "<p class='note'>How the scores were computed (features on "
        f"<code>{_esc(methods.get('features', {}).get('device', '?'))}</code>):</p>"
        "<table id='methods'><tr><th>scores</th><th></th><th>method, parameters, measured error</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _grid_rows(conditions: list[Any], per_row: int) -> tuple[list[list[int]], str]:
    """The sample indices of the grid, row by row, and its caption."""
    by_cond: dict[Any, list[int]] = {}
    for i, c in enumerate(conditions):
        row = by_cond.setdefault(c, [])
        if len(row) < per_row * 4:
            row.append(i)
    keys = sorted(by_cond, key=lambda c: (c is None, c if c is not None else 0))
    if len(keys) == 1 and keys[0] is None:
        idx = by_cond[None][: per_row * 4]
        return [idx[j : j + per_row] for j in range(0, len(idx), per_row)], (
            "no conditions in this set: the first samples"
        )
    more = f" (the first {MAX_GRID_ROWS} of {len(keys)})" if len(keys) > MAX_GRID_ROWS else ""
    keys = keys[:MAX_GRID_ROWS]
    caption = "one row per condition: " + ", ".join("none" if k is None else str(k) for k in keys) + more
    return [by_cond[k][:per_row] for k in keys], caption


def _hard_ends(hardness: np.ndarray, per_row: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(hardness, kind="stable")
    return order[::-1][:per_row], order[:per_row]


def _broken_shown(report: dict[str, Any], limit: int) -> list[int]:
    b = report["details"]["broken"]
    return [i for r in ("constant", "saturated") for i in b["indices"][r]][:limit]


def shown_indices(
    report: dict[str, Any], conditions: list[Any], hardness: np.ndarray | None, pairs: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """(synthetic, real) indices of every image :func:`render_report` draws, sorted."""
    per_row, top = report["config"]["grid_per_row"], report["config"]["top"]
    syn: set[int] = set()
    for row in _grid_rows(conditions, per_row)[0]:
        syn.update(row)
    if hardness is not None:
        for end in _hard_ends(hardness, per_row):
            syn.update(int(i) for i in end)
    for a, b in pairs[:top]:
        syn.update((a, b))
    nearest = report["details"]["memorisation"]["nearest_pairs"]
    syn.update(p["fake_index"] for p in nearest)
    syn.update(_broken_shown(report, top))
    real = {p["real_index"] for p in nearest} | set(report["details"]["real_row"]["indices"])
    return sorted(syn), sorted(real)


def _row_label(images: AuditImages, row: list[int]) -> str:
    """A grid row's label: its condition (and class, for label conditions), how many samples it has, and the
    real class most of its samples are nearest to."""
    cond = images.conditions[row[0]]
    if cond is None:
        label = "no condition"
    else:
        label = f"condition {cond}"
        if images.condition_names and cond in images.condition_names:
            label += f" ({images.condition_names[cond]})"
    n = sum(1 for c in images.conditions if c == cond)
    text = f"<b>{_esc(label)}</b><br>{n} samples"
    if images.predicted is not None:
        votes = [images.predicted[i] for i in range(len(images.conditions)) if images.conditions[i] == cond]
        top = max(set(votes), key=lambda c: (votes.count(c), -c))
        name = images.classes[top] if images.classes and top < len(images.classes) else str(top)
        share = 100 * votes.count(top) / len(votes)
        text += f"<br><span class='note'>nearest real class: {_esc(name)} ({share:.0f} %)</span>"
    return text


def _grids(report: dict[str, Any], images: AuditImages, per_row: int) -> str:
    rows, caption = _grid_rows(images.conditions, per_row)
    real_row = report["details"]["real_row"]
    out = ["<table id='grid'>"]
    if real_row["indices"]:
        names = real_row["labels"]
        label = "<b>real images</b><br>" + (
            "one per class:<br><span class='note'>"
            + _esc(
                ", ".join(
                    images.classes[c] if images.classes and c < len(images.classes) else str(c) for c in names
                )
            )
            + "</span>"
            if names is not None
            else "a seeded draw"
        )
        strip = rows_grid([[images.real[i] for i in real_row["indices"]]])
        out.append(f"<tr><th class='row'>{label}</th><td>{_img(strip, 'real images')}</td></tr>")
    for row in rows:
        strip = rows_grid([[images.synthetic[i] for i in row]])
        out.append(
            f"<tr><th class='row'>{_row_label(images, row)}</th><td>{_img(strip, 'samples')}</td></tr>"
        )
    out.append("</table>")
    return f"<p class='note'>{_esc(caption)}; the first row is real data, for comparison</p>" + "".join(out)


def _hardest(images: AuditImages, per_row: int) -> str:
    if images.hardness is None:
        return "<p>no hardness in this set (no <code>hardness</code> metadata and no encoder given)</p>"
    hardest, easiest = _hard_ends(images.hardness, per_row)
    parts = []
    for name, idx in (("hardest", hardest), ("easiest", easiest)):
        values = ", ".join(f"{images.hardness[i]:.3f}" for i in idx)
        parts.append(
            _figure(rows_grid([[images.synthetic[i] for i in idx]]), f"{name}: hardness {values}", "grid")
        )
    return "".join(parts)


def _pairs(report: dict[str, Any], images: AuditImages, limit: int) -> str:
    if not images.pairs:
        return (
            "<p>no pairs in this set (no <code>pair_a</code>/<code>pair_b</code> samples sharing a "
            "<code>pair_id</code>)</p>"
        )
    shown = images.pairs[:limit]
    info = report["details"]["pairs"]
    trend = info["feature_similarity"]["trend"]
    text = (
        f"<p>{info['count']} pairs; mean cosine similarity under the extractor "
        f"{_fmt(info['feature_similarity']['distribution']['mean'])}"
        + (f", trend {_fmt(trend['slope_per_1k_steps'])} per 1,000 generator steps" if trend else "")
        + "</p>"
    )
    cells = []
    for j, (a, b) in enumerate(shown):
        sides = "".join(
            f"<figure class='pair'>{_img(rows_grid([[images.synthetic[i]]]), name)}"
            f"<figcaption>{name}</figcaption></figure>"
            for name, i in (("pair_a", a), ("pair_b", b))
        )
        sim = images.values.get("pair_similarity")
        sim_text = f"<br>cosine {_fmt(float(sim[j]))}" if sim is not None and j < len(sim) else ""
        cells.append(f"<td>{sides}<div class='note'>samples {a} | {b}{sim_text}</div></td>")
    per_line = 4
    table = "".join(
        "<tr>" + "".join(cells[i : i + per_line]) + "</tr>" for i in range(0, len(cells), per_line)
    )
    return (
        text
        + f"<p class='note'>the first {len(shown)} pairs, each pair_a beside its pair_b</p>"
        + f"<table id='pair-table'>{table}</table>"
    )


def _histograms(report: dict[str, Any], images: AuditImages) -> str:
    figs = []
    if images.hardness is not None:
        figs.append(_figure(_histogram(images.hardness, "hardness", "per-sample NT-Xent"), "hardness"))
    sims = report["details"]["pairs"]
    if images.pairs:
        per_step = sims["feature_similarity"]["per_step"]
        if len(per_step) >= 2:
            figs.append(
                _figure(
                    _bars(
                        [str(p["step"]) for p in per_step], [p["mean"] for p in per_step], "pair sim. by step"
                    ),
                    "mean pair similarity per generator step",
                )
            )
    for key, title in (
        ("nearest_real_distance", "distance to nearest real"),
        ("memorisation_ratio", "ratio"),
    ):
        figs.append(_figure(_histogram(images.values[key], title, key.replace("_", " ")), title))
    cond = report["details"]["condition_coverage"]
    if cond["counts"]:
        figs.append(
            _figure(
                _bars(list(cond["counts"]), list(cond["counts"].values()), "samples per condition"),
                "conditions",
            )
        )
    return "".join(figs)


def _memorisation(report: dict[str, Any], images: AuditImages) -> str:
    mem = report["details"]["memorisation"]
    pairs = mem["nearest_pairs"]
    text = (
        f"<p>{mem['suspect_count']} suspects ({_fmt(100 * mem['suspect_fraction'])} %) with distance "
        "ratio below "
        f"{_fmt(mem['threshold'])}; the {len(pairs)} nearest pairs, sample | nearest real image:</p>"
    )
    rows = [[images.synthetic[p["fake_index"]], images.real[p["real_index"]]] for p in pairs]
    table = (
        "<table><tr><th>sample</th><th>real</th><th>distance</th><th>ratio</th><th>suspect</th></tr>"
        + "".join(
            f"<tr><td>{p['fake_index']}</td><td>{p['real_index']}</td>"
            f"<td class='num'>{_fmt(p['distance'])}</td>"
            f"<td class='num'>{_fmt(p['ratio'])}</td><td>{'yes' if p['suspect'] else ''}</td></tr>"
            for p in pairs
        )
        + "</table>"
    )
    return text + _figure(rows_grid(rows), "nearest pairs: sample | real neighbour", "grid") + table


def _broken(report: dict[str, Any], images: AuditImages, limit: int) -> str:
    b = report["details"]["broken"]
    text = (
        f"<p>{b['broken']} broken ({_fmt(100 * b['fraction'])} %): constant {b['constant']}, saturated "
        f"{b['saturated']}, non-finite {b['non_finite']}</p>"
    )
    idx = _broken_shown(report, limit)
    if idx:
        text += _figure(rows_grid([[images.synthetic[i] for i in idx]]), "examples of broken images", "grid")
    return text


def _classes(report: dict[str, Any]) -> str:
    cc = report["details"].get("class_coverage")
    if cc is None:
        return "<p>the real data has no labels, so there is no per-class view</p>"
    head = (
        "<tr><th>class</th><th>real images</th><th>coverage</th><th>samples assigned</th><th>share</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{_esc(p['name'])}</td><td class='num'>{p['real']}</td>"
        f"<td class='num'>{_fmt(p['coverage'])}</td>"
        f"<td class='num'>{p['generated']}</td><td class='num'>{_fmt(p['generated_share'])}</td></tr>"
        for p in cc["per_class"]
    )
    return (
        f"<p>samples assigned to classes by {_esc(cc['predicted_by'])} in {_esc(cc['extractor'])}; "
        f"{cc['classes_generated']} of {cc['num_classes']} classes generated</p><table>{head}{rows}</table>"
    )


def render_report(report: dict[str, Any], images: AuditImages) -> str:
    """The HTML text of the report (see the module docstring)."""
    per_row = report["config"]["grid_per_row"]
    top = report["config"]["top"]
    sections = [
        _section("verdict", "Verdict:", _verdict(report), badge=report["verdict"]["status"]),
        _section("summary", "What was audited", _summary(report)),
        _section("extractor", "Feature space", _extractor(report)),
        _section("metrics", f"Metrics (extractor {report['extractor']['id']})", _metrics_table(report)),
        _section("grids", "Samples per condition", _grids(report, images, per_row)),
        _section("hardest", "Hardest and easiest samples", _hardest(images, per_row)),
        _section("pairs", "Positive pairs", _pairs(report, images, top)),
        _section("histograms", "Distributions", _histograms(report, images)),
        _section("memorisation", "Memorisation suspects", _memorisation(report, images)),
        _section("broken", "Broken images", _broken(report, images, top)),
        _section("classes", "Class coverage", _classes(report)),
    ]
    title = f"synthkit audit: {report['shards']['name']}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )

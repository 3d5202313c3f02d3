"""The audit's verdict: one gate per check, each pass / warn / fail with a one-sentence reason.

A score alone says little ("FID 0.26" in a weak encoder's space means nothing); the audit therefore also
scores a **real-vs-real reference** in the same feature space (held-out real images against the same real
images, at the synthetic set's size where possible) and the gates read each figure against it. The
thresholds below are the product's defaults; each one has its reason next to it, and README.md repeats them.

Gates (:data:`GATES`, in the order they are reported):

- ``broken``: constant, saturated or non-finite images, beyond the real data's own rate;
- ``memorisation``: near-copies of real training images, beyond the rate at which held-out real images are
  near-copies of training images (data sets hold duplicates);
- ``precision``: fidelity: the share of samples on the real manifold, and their density (Naeem et al.,
  2020: robust where precision is fooled, e.g. noise that an in-domain classifier maps into one dense region
  of its space scored precision 0.87 against 0.94 real, density 0.17 against 0.99), each as a fraction of
  the reference's; the lower ratio decides;
- ``coverage``: the share of real neighbourhoods holding a sample, as a fraction of the reference's
  (diversity);
- ``conditions``: condition collapse: conditions never generated, conditions the samples do not reflect
  (their features do not tell one condition from another), or samples that fall into fewer real classes
  than held-out real images do;
- ``extractor``: the feature space itself: a space in which held-out real images are not told apart by
  class gives every other figure little meaning (a near-chance classifier once reported FID 0.0089).

A gate that cannot be decided (no labels, no reference) is ``skip`` with the reason; it never fails a run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from synthkit.metrics.extractors import EXTRACTOR_FAIL, EXTRACTOR_PASS, chance_corrected

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
LEVELS = {SKIP: -1, PASS: 0, WARN: 1, FAIL: 2}
FAIL_ON = (WARN, FAIL)
GATES = ("broken", "memorisation", "precision", "coverage", "conditions", "extractor")

# broken: excess share of broken images over the real data's. Half a percent wastes little of a training
# set; above 5 % the generator is failing on a visible share of its outputs.
BROKEN_WARN, BROKEN_FAIL = 0.005, 0.05
# memorisation: excess share of suspects over held-out real images'. A copy leaks training data and teaches
# nothing new; half a percent is within the noise of small sets, 2 % is a pattern.
MEMORISATION_WARN, MEMORISATION_FAIL = 0.005, 0.02
# precision and coverage, as a fraction of the real-vs-real figure at the same size. A user's comparison on
# Fashion-MNIST: real 0.967, a pre-trained cGAN 0.77 (0.80 of real), HPG hard samples 0.57 (0.59),
# a diffusion model 0.007, noise 0. At 3/4 of real a set is usable; below 1/2, most of it is off the real
# manifold (precision) or misses most of what real data covers (coverage).
RATIO_PASS, RATIO_FAIL = 0.75, 0.5
# a reference this low means the feature space cannot tell real from real: no ratio is read against it
REFERENCE_MIN = 0.05
# conditions: the samples' features must tell their conditions apart better than chance (leave-one-out kNN
# accuracy among the samples, chance-corrected): below 0.1 the generator ignores its condition, below 0.3
# the conditions barely show.
SEPARABILITY_FAIL, SEPARABILITY_WARN = 0.1, 0.3
# conditions: the samples' spread over real classes (normalised entropy of kNN-assigned classes) may fall
# this far below the reference's before it is a warning
CLASS_ENTROPY_SLACK = 0.15
# extractor: chance-corrected accuracy of held-out real images classified by kNN in the audit's feature
# space, and a classifier's own test accuracy (EXTRACTOR_PASS / EXTRACTOR_FAIL: see metrics.extractors).
THRESHOLDS = {
    "broken": {"warn_above": BROKEN_WARN, "fail_above": BROKEN_FAIL},
    "memorisation": {"warn_above": MEMORISATION_WARN, "fail_above": MEMORISATION_FAIL},
    "precision": {
        "pass_from": RATIO_PASS,
        "fail_below": RATIO_FAIL,
        "reference_min": REFERENCE_MIN,
        "reads": "precision and density, each / its reference",
    },
    "coverage": {"pass_from": RATIO_PASS, "fail_below": RATIO_FAIL, "reference_min": REFERENCE_MIN},
    "conditions": {
        "separability_warn_below": SEPARABILITY_WARN,
        "separability_fail_below": SEPARABILITY_FAIL,
        "class_entropy_slack": CLASS_ENTROPY_SLACK,
    },
    "extractor": {"pass_from": EXTRACTOR_PASS, "fail_below": EXTRACTOR_FAIL},
}


@dataclass(frozen=True)
class Gate:
    """One check: ``status`` (pass / warn / fail / skip), ``reason`` (one sentence), the figure it read
    (``value``) and the reference it read it against (None where there is none)."""

    name: str
    status: str
    reason: str
    value: float | None = None
    reference: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "thresholds": THRESHOLDS[self.name]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def broken_gate(fraction: float, real_fraction: float | None) -> Gate:
    base = real_fraction or 0.0
    excess = fraction - base
    where = f"{_pct(fraction)} of the samples are constant, saturated or non-finite"
    where += f" (real images: {_pct(base)})" if real_fraction is not None else ""
    if excess > BROKEN_FAIL:
        return Gate(
            "broken",
            FAIL,
            f"{where}: the generator fails on a visible share of its outputs.",
            fraction,
            real_fraction,
        )
    if excess > BROKEN_WARN:
        return Gate("broken", WARN, f"{where}: drop them before training.", fraction, real_fraction)
    return Gate("broken", PASS, f"{where}.", fraction, real_fraction)


def memorisation_gate(fraction: float, reference: float | None, threshold: float) -> Gate:
    base = reference or 0.0
    excess = fraction - base
    where = (
        f"{_pct(fraction)} of the samples are nearer a real training image than {threshold:g} x its own "
        "nearest real neighbour"
    )
    where += f" (held-out real images: {_pct(base)})" if reference is not None else " (no reference)"
    if excess > MEMORISATION_FAIL:
        return Gate(
            "memorisation", FAIL, f"{where}: the generator copies its training data.", fraction, reference
        )
    if excess > MEMORISATION_WARN:
        return Gate(
            "memorisation",
            WARN,
            f"{where}: look at the suspects before sharing the set.",
            fraction,
            reference,
        )
    return Gate("memorisation", PASS, f"{where}.", fraction, reference)


_RATIO_TEXT = {
    "precision": (
        "precision",
        "most samples lie off the real manifold",
        "fewer samples lie on the real manifold than real images do",
    ),
    "coverage": (
        "coverage",
        "the samples miss most of the real data's neighbourhoods (low diversity or off-manifold)",
        "the samples cover fewer real neighbourhoods than real images do",
    ),
}


def precision_gate(
    precision: float,
    reference: float | None,
    density: float | None,
    density_reference: float | None,
    why_none: str,
) -> Gate:
    """Fidelity: precision and density, each as a fraction of its real-vs-real reference; the worse decides
    (precision alone passes samples that sit in a few dense spots of the real manifold)."""
    gate = ratio_gate("precision", precision, reference, why_none)
    if density is None or density_reference is None or density_reference < REFERENCE_MIN:
        return gate
    ratio = density / density_reference
    status = FAIL if ratio < RATIO_FAIL else WARN if ratio < RATIO_PASS else PASS
    if LEVELS[status] <= LEVELS[gate.status]:
        return gate
    text = (
        f"precision {precision:.3f} vs {reference:.3f} real-vs-real, but density {density:.3f} vs "
        f"{density_reference:.3f} ({ratio:.2f} of it): "
        + (
            "most samples sit off the real data's dense regions"
            if status == FAIL
            else "fewer samples sit in dense real regions than real images do"
        )
        + " (density is the outlier-robust reading of fidelity)."
    )
    return Gate("precision", status, text, precision, reference)


def ratio_gate(name: str, value: float, reference: float | None, why_none: str) -> Gate:
    """``precision`` or ``coverage``: the figure as a fraction of the real-vs-real reference."""
    label, fail_text, warn_text = _RATIO_TEXT[name]
    if reference is None:
        return Gate(
            name,
            SKIP,
            f"{label} {value:.3f} has no real-vs-real reference to be read against: {why_none}.",
            value,
        )
    if reference < REFERENCE_MIN:
        return Gate(
            name,
            WARN,
            f"the real-vs-real {label} is {reference:.3f}: this feature space does not recognise real images "
            "as real, so the samples' {label} {value:.3f} cannot be judged.".replace("{label}", label),
            value,
            reference,
        )
    ratio = value / reference
    where = f"{label} {value:.3f} vs {reference:.3f} real-vs-real ({ratio:.2f} of it)"
    if ratio < RATIO_FAIL:
        return Gate(name, FAIL, f"{where}: {fail_text}.", value, reference)
    if ratio < RATIO_PASS:
        return Gate(name, WARN, f"{where}: {warn_text}.", value, reference)
    return Gate(name, PASS, f"{where}.", value, reference)


#: one finding of the conditions gate: (status, sentence, value, reference)
_Finding = tuple[str, str, float | None, float | None]


def conditions_gate(
    conditions: dict[str, Any] | None,
    separability: dict[str, Any] | None,
    classes: dict[str, Any] | None,
    reference_classes: dict[str, Any] | None,
) -> Gate:
    """Condition collapse, from the condition counts, the conditions' separability among the samples and
    the samples' spread over real classes next to the reference's; the worst finding decides."""
    findings = [
        f
        for f in (
            _conditions_seen(conditions),
            _separability(separability),
            _class_spread(classes, reference_classes),
        )
        if f is not None
    ]
    if not findings:
        return Gate(
            "conditions",
            SKIP,
            "the set has no conditions and the real data has no labels, so collapse cannot be measured.",
        )
    worst = max(LEVELS[s] for s, *_ in findings)
    chosen = [f for f in findings if LEVELS[f[0]] == worst]
    status, _, value, reference = chosen[0]
    sentence = "; ".join(text for _, text, _, _ in chosen)
    return Gate("conditions", status, sentence[0].upper() + sentence[1:] + ".", value, reference)


def _conditions_seen(conditions: dict[str, Any] | None) -> _Finding | None:
    """Conditions never generated: half or more fail, any warns (None: no counts, or all seen)."""
    seen = (conditions or {}).get("conditions_seen")
    if not seen:
        return None
    total = conditions["num_conditions"]
    if seen <= total / 2:
        return (FAIL, f"only {seen} of {total} conditions were generated", seen, total)
    if seen < total:
        return (WARN, f"{total - seen} of {total} conditions were never generated", seen, total)
    return None


def _separability(separability: dict[str, Any] | None) -> _Finding | None:
    """How well the samples' features tell their conditions apart (chance-corrected kNN accuracy)."""
    if separability is None:
        return None
    k = separability["chance_corrected"]
    text = (
        f"the samples' features tell their {separability['conditions']} conditions apart with kNN "
        f"accuracy {separability['accuracy']:.2f} (chance {separability['chance']:.2f})"
    )
    if k < SEPARABILITY_FAIL:
        return (FAIL, text + ": the generator ignores its condition", k, None)
    if k < SEPARABILITY_WARN:
        return (WARN, text + ": the conditions barely show", k, None)
    return (PASS, text, k, None)


def _class_spread(classes: dict[str, Any] | None, reference: dict[str, Any] | None) -> _Finding | None:
    """How many real classes the samples fall into, and how evenly, next to held-out real images."""
    if classes is None:
        return None
    got, n = classes["classes_generated"], classes["num_classes"]
    ref_got = reference["classes_generated"] if reference else n
    text = f"the samples fall into {got} of {n} real classes (held-out real images: {ref_got})"
    h, ref_h = classes["normalized_entropy"], (reference or {}).get("normalized_entropy")
    if got <= ref_got / 2:
        return (FAIL, text + ": the set has collapsed onto a few classes", got, ref_got)
    if got < ref_got:
        return (WARN, text, got, ref_got)
    if ref_h is None:
        return (PASS, f"{text}, class entropy {h:.2f}", h, ref_h)
    if h < ref_h - CLASS_ENTROPY_SLACK:
        return (WARN, f"{text}, but unevenly (class entropy {h:.2f} vs {ref_h:.2f})", h, ref_h)
    return (PASS, f"{text}, class entropy {h:.2f} vs {ref_h:.2f}", h, ref_h)


def extractor_gate(quality: dict[str, Any]) -> Gate:
    """The feature space: chance-corrected kNN accuracy of held-out real images (and a classifier's own
    test accuracy; the lower decides)."""
    scores = []
    parts = []
    n = quality.get("num_classes")
    if quality.get("knn_accuracy") is not None and n:
        scores.append(chance_corrected(quality["knn_accuracy"], n))
        parts.append(f"kNN accuracy of held-out real images {quality['knn_accuracy']:.3f}")
    if quality.get("classifier_test_accuracy") is not None and quality.get("classifier_classes"):
        scores.append(chance_corrected(quality["classifier_test_accuracy"], quality["classifier_classes"]))
        parts.append(f"the classifier's test accuracy {quality['classifier_test_accuracy']:.3f}")
    if not scores:
        return Gate(
            "extractor",
            SKIP,
            "the real data has no labels, so the feature space's quality cannot be measured.",
        )
    k = min(scores)
    where = (
        f"{quality['id']}: " + " and ".join(parts) + f" with {n or quality.get('classifier_classes')} classes"
    )
    if k < EXTRACTOR_FAIL:
        return Gate("extractor", FAIL, f"{where}, near chance: every other figure here means little.", k)
    if k < EXTRACTOR_PASS:
        return Gate("extractor", WARN, f"{where}: a weak feature space; read the other figures with care.", k)
    return Gate("extractor", PASS, f"{where}.", k)


def verdict(gates: list[Gate]) -> dict[str, Any]:
    """The overall status (the worst gate's; ``skip`` counts as pass) and every gate."""
    worst = max((LEVELS[g.status] for g in gates), default=0)
    status = {0: PASS, 1: WARN, 2: FAIL}[max(worst, 0)]
    counts = {s: sum(g.status == s for g in gates) for s in (FAIL, WARN, PASS, SKIP)}
    return {"status": status, "counts": counts, "gates": [g.as_dict() for g in gates]}


def failing(report_verdict: dict[str, Any], level: str) -> list[dict[str, Any]]:
    """The gates at or above ``level`` (``warn`` or ``fail``): a script's ``--fail-on``."""
    if level not in FAIL_ON:
        raise ValueError(f"fail-on level must be one of {', '.join(FAIL_ON)}, got {level!r}")
    return [g for g in report_verdict["gates"] if LEVELS[g["status"]] >= LEVELS[level]]


def verdict_lines(report_verdict: dict[str, Any]) -> list[str]:
    """The verdict as terminal lines: the overall status, then one line per gate."""
    c = report_verdict["counts"]
    lines = [
        f"verdict: {report_verdict['status'].upper()} ({c[FAIL]} fail, {c[WARN]} warn, {c[PASS]} pass, "
        f"{c[SKIP]} skipped)"
    ]
    lines += [f"  {g['status']:<4}  {g['name']:<12} {g['reason']}" for g in report_verdict["gates"]]
    return lines

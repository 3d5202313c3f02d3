"""``evaluate``'s data: the run's own subset, its whole train split, another source, a test limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthkit.errors import ConfigError
from synthkit.evaluate import evaluate


def test_the_run_data_its_whole_split_or_another_source(trained_run: Path, fashion_root: Path) -> None:
    own = evaluate(trained_run, test_limit=9)
    assert (own["data"], own["train_images"], own["test_images"]) == ("digits", 256, 9)  # the run's subset
    whole = evaluate(trained_run, full_train=True, test_limit=9)
    assert whole["train_images"] > 256 and whole["test_images"] == 9
    other = evaluate(trained_run, "fashion-mnist", root=str(fashion_root), test_limit=20)
    # another source: its own whole train split (the run's subset belongs to the run's data)
    assert (other["data"], other["train_images"], other["test_images"]) == ("fashion-mnist", 400, 20)
    assert 0.0 <= other["knn_accuracy"] <= 1.0 and other["encoder_hash"] == own["encoder_hash"]


@pytest.mark.parametrize("knn_k", [0, True, "3", 2.0])
def test_a_knn_k_that_is_not_a_positive_integer_is_refused_before_any_work(knn_k: object) -> None:
    with pytest.raises(ConfigError, match="--knn-k must be a positive integer"):
        evaluate("/nonexistent/run", knn_k=knn_k)  # type: ignore[arg-type]

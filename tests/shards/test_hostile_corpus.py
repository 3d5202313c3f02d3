"""Every hostile set of ``hostile.py`` against every consumer, from files and over HTTP, each bounded in time.

Consumers: ``shards verify``, ``shards inspect``, the reader (``iter_samples``), the reader with
``on_error="skip"``, the mixed stream ``train --data`` trains from (``MixedShardStream`` through a
DataLoader), and ``audit``'s read path. Each refusal must be a ShardError of one line naming the shard
(and the sample key where the case has one); nothing refused may be yielded, skip mode must keep every good
sample, and no consumer may take longer than ``LIMIT_S``. ``HOSTILE.md`` is the table this test builds;
it fails when the file is stale (rewrite it with ``SYNTHKIT_WRITE_HOSTILE=1``).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile import CASES, Case
from torch.utils.data import DataLoader

from synthkit.audit_stream import open_side
from synthkit.data.inspect import format_summary, inspect_shard_set
from synthkit.errors import ShardError
from synthkit.logs import error_lines
from synthkit.shards import iter_samples, verify_shard_set
from synthkit.shards.mix import MixedShardStream, MixSource, collate_images, iter_batches

LIMIT_S = 30.0
TABLE = Path(__file__).with_name("HOSTILE.md")
CONSUMERS = ("verify", "inspect", "reader", "reader skip", "train stream", "audit")


def _audit_read(location: str) -> list[dict[str, Any]]:
    """The audit's read path: the set streamed batch by batch (``synthkit.audit_stream``)."""
    side = open_side(location, "synthetic", None)
    return [meta for batch in side.batches(5) for meta in batch.metas]


def _bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; a consumer that does not return within LIMIT_S has hung."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - carried to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIMIT_S)
    if thread.is_alive():
        pytest.fail(f"hung: no answer within {LIMIT_S} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _stream_keys(location: str) -> list[str]:
    stream = MixedShardStream([MixSource("h", location, 1.0)], seed=0, epoch_samples=12)
    loader = DataLoader(stream, batch_size=4, collate_fn=collate_images)
    return [m["latent_id"] for _, metas in iter_batches(loader, stream) for m in metas]


def _one_line(exc: BaseException, case: Case, root: str) -> str:
    """Check a refusal's message and return it with the corpus location taken out."""
    message = str(exc)
    assert isinstance(exc, ShardError), f"{type(exc).__name__} instead of a ShardError: {message}"
    assert "\n" not in message, f"not one line: {message!r}"
    if case.shard is not None:
        assert case.shard in message, f"does not name {case.shard}: {message}"
    if case.key is not None:
        assert f"'{case.key}'" in message, f"does not name sample {case.key!r}: {message}"
    return message.replace(root, "SET")


def _refusal(fn: Callable[[], Any], case: Case, root: str) -> str:
    try:
        _bounded(fn)
    except ShardError as exc:
        return _one_line(exc, case, root)
    pytest.fail("accepted: no ShardError")


def _cells(location: str, case: Case, root: str) -> tuple[list[str], str]:
    """What each consumer did with the set at ``location`` (asserted right), and the reader's reason."""
    cells: list[str] = []
    report = _bounded(lambda: verify_shard_set(location))
    if case.valid:
        assert report.ok, report.problems
        cells.append("OK")
    else:
        assert not report.ok
        assert all("\n" not in p for p in report.problems)
        named = [
            p
            for p in report.problems
            if (case.shard or "") in p and (case.key is None or f"'{case.key}'" in p)
        ]
        assert named, (case, report.problems)
        cells.append(f"{len(report.problems)} problem(s)")

    if case.valid:
        summary = _bounded(lambda: inspect_shard_set(location))
        text = format_summary(summary)
        assert "\x1b" not in text and "\x07" not in text, text
        cells.append("read; printed escaped")
        samples = _bounded(lambda: list(iter_samples(location)))
        assert {s["__key__"] for s in samples} == case.good
        cells.append(f"yielded {len(samples)}")
        errors: list[tuple[str, str]] = []
        assert len(_bounded(lambda: list(iter_samples(location, on_error="skip", errors=errors)))) == len(
            samples
        )
        assert not errors
        cells.append(f"yielded {len(samples)}, skipped 0")
        assert len(_bounded(lambda: _stream_keys(location))) == 12
        cells.append("trains")
        assert len(_bounded(lambda: _audit_read(location))) == len(samples)
        cells.append("audits")
        return cells, "valid data: shard text is escaped where printed"

    cells.append("refused" if _refusal(lambda: inspect_shard_set(location), case, root) else "?")
    reason = _refusal(lambda: list(iter_samples(location)), case, root)
    cells.append("refused")

    errors = []
    try:
        yielded = _bounded(
            lambda: [s["__key__"] for s in iter_samples(location, on_error="skip", errors=errors)]
        )
    except ShardError as exc:  # a manifest that cannot be trusted is not skippable: nothing to read
        _one_line(exc, case, root)
        cells.append("refused (manifest)")
    else:
        assert not set(yielded) & case.bad, f"yielded refused samples {set(yielded) & case.bad}"
        assert len(yielded) == len(set(yielded)), "a key yielded twice"
        if case.good is not None:
            assert set(yielded) == case.good, f"good samples dropped: {case.good - set(yielded)}"
        assert errors, "skipped nothing"
        for where, why in errors:
            assert "\n" not in why and (case.shard or "") in where + why
        cells.append(f"kept {len(yielded)}, skipped {len(errors)}")

    cells.append("refused" if _refusal(lambda: _stream_keys(location), case, root) else "?")
    cells.append("refused" if _refusal(lambda: _audit_read(location), case, root) else "?")
    return cells, reason


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, {name: build(root / name) for name, (_, build) in CASES.items()}


@pytest.fixture(scope="module")
def http_root(corpus: tuple[Path, dict[str, Case]]) -> Any:
    root, _ = corpus

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _row(name: str, cells: list[str], reason: str, over_http: str) -> str:
    reason = re.sub(r"[0-9a-f]{64}", "…", reason)  # hashes say nothing in a table
    reason = reason if len(reason) <= 150 else reason[:147] + "..."
    return (
        "| " + " | ".join([f"`{name}`", CASES[name][0], *cells, over_http, reason.replace("|", "\\|")]) + " |"
    )


def test_hostile_corpus_from_files_and_over_http(corpus, http_root):
    root, cases = corpus
    rows = []
    for name, case in cases.items():
        cells, reason = _cells(str(root / name), case, str(root))
        if case.local_only:
            over_http = "n/a (file-system attack)"
        else:
            http_cells, _ = _cells(f"{http_root}/{name}", case, http_root)
            assert http_cells == cells, (name, http_cells, cells)
            over_http = "same"
        rows.append(_row(name, cells, reason, over_http))
    header = (
        "| case | class | " + " | ".join(CONSUMERS) + " | over HTTP | the reader's message |\n"
        "|" + "---|" * (len(CONSUMERS) + 4)
    )
    table = (
        "# The hostile shard corpus against every consumer\n\n"
        "Generated by `tests/shards/test_hostile_corpus.py` from the sets `tests/shards/hostile.py`\n"
        "writes (`SYNTHKIT_WRITE_HOSTILE=1 python -m pytest tests/shards/test_hostile_corpus.py`\n"
        "rewrites it; the test fails when it is stale). Every refusal is one line naming the shard, and\n"
        'the sample where the case has one; `kept N, skipped M` is `on_error="skip"`: N good samples\n'
        "yielded, M refusals recorded, none of the refused yielded. `train stream` is the\n"
        "`MixedShardStream` + DataLoader path of `train --data`; `audit` its shard-reading path. Each\n"
        "consumer ran under a 30 s bound; none came near it. `over HTTP`: the same set served by\n"
        "`http.server` on 127.0.0.1 gave the same cells in every column.\n\n"
        + header
        + "\n"
        + "\n".join(rows)
        + "\n"
    )
    if os.environ.get("SYNTHKIT_WRITE_HOSTILE"):
        TABLE.write_text(table)
    assert TABLE.exists() and TABLE.read_text() == table, (
        "HOSTILE.md is stale: rerun with SYNTHKIT_WRITE_HOSTILE=1"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["png-bit-flipped", "key-again-later-in-tar", "meta-1e999", "png-bomb"])
def test_refusals_in_dataloader_workers_are_one_line_shard_errors(corpus, name):
    """With num_workers=2 a refusal reaches the main process as the same one-line ShardError, and skips made
    in a worker are recorded in the main process's ``stream.skipped``."""
    root, cases = corpus
    case, location = cases[name], str(root / name)

    def keys(on_error: str, stream_box: list) -> list[int]:
        stream = MixedShardStream(
            [MixSource("h", location, 1.0)], seed=0, epoch_samples=12, on_error=on_error
        )
        stream_box.append(stream)
        loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate_images)
        return [m["latent_id"] for _, metas in iter_batches(loader, stream) for m in metas]

    _refusal(lambda: keys("raise", []), case, str(root))
    # skipped, a bad sample or a whole refused shard: each worker's stretch of the source's stream runs on
    # into the good samples (synthkit.shards.mix), so the epoch still holds its 12, none of them bad
    box: list = []
    with pytest.warns(UserWarning, match="skipped"):
        got = _bounded(lambda: keys("skip", box))
    assert len(got) == 12
    assert {f"s{i:04d}" for i in got} <= case.good
    assert any(case.shard in where for where in box[0].skipped), box[0].skipped


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "workers"), [("png-bit-flipped", 0), ("total-10^12", 0), ("meta-1e999", 0), ("meta-1e999", 2)]
)
def test_train_data_refuses_in_one_line(corpus, tiny_pipeline, tmp_path, capsys, name, workers):
    """``synthkit train --data NAME=SET:W`` on a hostile set: exit 2 and one line naming the shard."""
    from synthkit.cli import main

    root, cases = corpus
    args = ["train", str(tiny_pipeline), "--out", str(tmp_path / "run"), "--no-progress"]
    args += ["--data", f"h={root / name}:1", "--hsg.enabled=false", "--train.knn_every=0"]
    args += ["--mix.epoch_samples=6", "--train.batch_size=2", f"--mix.num_workers={workers}"]
    code = _bounded(lambda: main(args))
    lines = error_lines(capsys.readouterr().err)  # the log records (trackers, epochs) aside
    assert code == 2, lines
    assert len(lines) == 1 and cases[name].shard in lines[0], lines

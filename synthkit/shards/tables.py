"""A metadata table per shard: every sample's key, shard and metadata as rows, beside the tars.

Querying a set by hardness, kind or condition should not mean reading every tar (img2dataset writes a
Parquet table per shard for the same reason). The writer (``ShardSetWriter``) writes, for shard ``i``,
``metadata/%06d.parquet`` when pyarrow is installed, else ``metadata/%06d.csv``, and lists each table in
the manifest (``metadata_tables``: format, columns, and per table its shard, rows, bytes, sha256)::

    import pandas as pd
    df = pd.read_parquet("shards/my-set/metadata")          # every table of the set at once
    df[df.kind == "pair_a"].sort_values("hardness").head()

Columns: ``__key__`` (the sample key, as webdataset names it), ``shard`` (its file), every field of
:data:`synthkit.shards.format.META_FIELDS` with its type (null where it does not apply), ``cls`` (the true
label, or null) and ``extra`` (the JSON of any other metadata keys, or null). Parquet keeps the types;
in CSV a null is an empty cell.

The tables live in a subdirectory, named by shard index alone, so that Hugging Face's
``load_dataset("webdataset", data_dir=SET)`` (which reads the files whose names hold the split word, here
the shards) never opens them as tars, and a Parquet reader given the directory reads only tables.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthkit.atomic import write_bytes_atomic
from synthkit.errors import OutputError
from synthkit.shards import location as loc
from synthkit.shards.format import META_FIELDS, ShardError
from synthkit.shards.reader import iter_shard_members  # the reader imports nothing of the tables

__all__ = [
    "COLUMNS",
    "TABLES_DIR",
    "check_tables",
    "encode_table",
    "publish_tables",
    "shard_rows",
    "table_format",
    "table_row",
    "write_table",
]

# A table is a few hundred bytes per row; far beyond any real one is refused, not read into memory.
MAX_TABLE_BYTES = 1 << 30

TABLES_DIR = "metadata"
COLUMNS = ("__key__", "shard", *META_FIELDS, "cls", "extra")
_TYPES = {"__key__": "string", "shard": "string", **META_FIELDS, "cls": "int", "extra": "string"}
_TABLE = re.compile(r"\d{6,}\.(parquet|csv)")


def table_format() -> str:
    """``parquet`` where pyarrow is installed, else ``csv`` (the standard library's)."""
    return "parquet" if importlib.util.find_spec("pyarrow") is not None else "csv"


def table_name(index: int, fmt: str) -> str:
    """``metadata/000003.parquet``: the table of shard ``index``, relative to the set directory."""
    return f"{TABLES_DIR}/{index:06d}.{fmt}"


def is_table_file(name: str) -> bool:
    return bool(_TABLE.fullmatch(name))


def table_row(key: str, shard: str, meta: dict[str, Any], cls: int | None) -> dict[str, Any]:
    """One sample as a row of :data:`COLUMNS`."""
    extra = {k: v for k, v in meta.items() if k not in META_FIELDS}
    row: dict[str, Any] = {"__key__": key, "shard": shard}
    for field, kind in META_FIELDS.items():
        value = meta.get(field)
        row[field] = float(value) if kind == "float" and value is not None else value
    row["cls"] = None if cls is None else int(cls)
    row["extra"] = json.dumps(extra, sort_keys=True, separators=(",", ":")) if extra else None
    return row


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(c, types[_TYPES[c]]) for c in COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")  # no timestamps: same rows, same bytes
    return sink.getvalue().to_pybytes()


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def encode_table(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The bytes of one shard's table: the same rows give the same bytes. A writer encodes each shard's
    table as the shard completes and holds only these (compressed) bytes until it publishes the set, so its
    memory grows by tens of bytes per sample, not by the rows themselves."""
    return _parquet_bytes(rows) if fmt == "parquet" else _csv_bytes(rows)


def write_table(directory: Path, index: int, data: bytes, rows: int, fmt: str) -> dict[str, Any]:
    """Publish the table of shard ``index`` (``data`` from :func:`encode_table`; temp name, fsync, rename);
    return its manifest entry."""
    name = table_name(index, fmt)
    (directory / TABLES_DIR).mkdir(exist_ok=True)
    write_bytes_atomic(directory / name, data)
    return {"name": name, "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def remove_foreign_tables(directory: Path, keep: set[str]) -> None:
    """Delete table files (and temp files) under ``metadata/`` that are not this set's: a failed earlier
    writer's, which would otherwise be read along with ours by ``pd.read_parquet(SET/metadata)``."""
    tables = directory / TABLES_DIR
    if not tables.is_dir():
        return
    for entry in os.listdir(tables):
        rel = f"{TABLES_DIR}/{entry}"
        stale_temp = entry.startswith(".") and entry.endswith(".tmp")
        if (is_table_file(entry) and rel not in keep) or stale_temp:
            (tables / entry).unlink(missing_ok=True)


def shard_rows(path: Path) -> list[dict[str, Any]]:
    """The table rows of a finished shard, read back from it (its ``json`` and ``cls`` members): how a
    resumed writer gets the rows of the shards it kept, and how a set published from parts gets all of
    them (the same rows, hence the same bytes, as the writer that wrote the samples would have)."""
    rows = []
    for key, parts in iter_shard_members(path):
        meta = json.loads(parts.get("json", b"{}").decode("utf-8"))
        cls = int(parts["cls"].decode("ascii")) if "cls" in parts else None
        rows.append(table_row(key, path.name, meta, cls))
    return rows


def publish_tables(
    directory: Path,
    shards: list[dict[str, Any]],
    fmt: str,
    encoded: dict[str, bytes] | None = None,
    on_publish: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the table of every shard in ``shards`` (manifest entries, in order) and return the manifest's
    ``metadata_tables``. ``encoded`` holds the tables (:func:`encode_table`, in ``fmt``) of the shards
    written in this process; the others are read back from their tars (:func:`shard_rows`), one shard at a
    time. ``on_publish`` gets each table's relative name once it is in place (a remote output uploads it).
    On a failure this call's tables are removed again: the set is not published, and no table outlives
    it."""
    encoded = encoded or {}
    tables = []
    for i, shard in enumerate(shards):
        name = shard["name"]
        data, count = encoded.get(name), shard["count"]  # an encoded table holds the shard's samples
        if data is None:
            these = shard_rows(directory / name)
            data, count = encode_table(these, fmt), len(these)
        try:
            entry = write_table(directory, i, data, count, fmt)
        except OutputError:
            remove_foreign_tables(directory, set())
            with contextlib.suppress(OSError):
                (directory / TABLES_DIR).rmdir()
            raise
        if on_publish is not None:
            on_publish(entry["name"])
        tables.append({**entry, "shard": name})
    remove_foreign_tables(directory, {t["name"] for t in tables})
    return {"dir": TABLES_DIR, "format": fmt, "columns": list(COLUMNS), "tables": tables}


def check_tables(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """Problems of a set's metadata tables against its manifest (none listed: nothing to check)."""
    info = manifest.get("metadata_tables")
    if info is None:
        return []
    if not isinstance(info, dict) or not isinstance(info.get("tables"), list):
        return ["manifest.json: 'metadata_tables' is malformed"]
    problems = []
    counts = {s["name"]: s["count"] for s in manifest["shards"]}
    for entry in info["tables"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.fullmatch(rf"{TABLES_DIR}/\d{{6,}}\.(parquet|csv)", name):
            problems.append(f"manifest.json: metadata table entry {entry!r} is malformed")
            continue
        try:  # a local directory or a URL, read as the shards are (shards/location.py)
            data = loc.read_bytes(loc.join(loc.as_location(directory), name), MAX_TABLE_BYTES)
        except ShardError as exc:
            problems.append(f"{name}: metadata table unreadable ({exc})")
            continue
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            problems.append(f"{name}: metadata table does not match its manifest entry (bytes or sha256)")
        if counts.get(entry.get("shard")) != entry.get("rows"):
            problems.append(
                f"{name}: {entry.get('rows')} rows, but its shard holds {counts.get(entry.get('shard'))}"
            )
    return problems

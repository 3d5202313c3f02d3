"""Shard sets that other tools read whole: Hugging Face ``datasets``' webdataset loader on a ``--kind all``
set (every field of every row, ``data_dir=SET`` included), the metadata tables read back with pandas and
pyarrow, and names and keys of one export's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthkit.cli import main
from synthkit.shards import iter_samples, read_manifest, verify_shard_set
from synthkit.shards.format import META_FIELDS
from synthkit.shards.tables import COLUMNS, encode_table, write_table


def _datasets():
    return pytest.importorskip("datasets", reason="the test extra installs it (pip install 'synthkit[test]')")


def _pandas():
    return pytest.importorskip("pandas", reason="the test extra installs it (pip install 'synthkit[test]')")


def _generate(run: Path, out: Path, *extra: str) -> dict:
    assert main(["generate", "--run", str(run), "--out", str(out), "--no-progress", "--json", *extra]) == 0
    return read_manifest(out)


def _ours(directory: Path) -> dict[str, dict]:
    return {s["__key__"]: {**s["meta"], "cls": s["cls"]} for s in iter_samples(directory)}


@pytest.fixture(scope="module")
def all_sets(
    pair_run: Path, diffusion_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """``--kind all`` sets of a cGAN HSG+HPG run and of a diffusion run (guidance, t_split, branch_mode)."""
    root = tmp_path_factory.mktemp("sets")
    _generate(pair_run, root / "cgan", "--n", "12", "--maxcount", "5")
    _generate(diffusion_run, root / "diffusion", "--n", "6", "--maxcount", "4", "--kind", "all")
    return {"cgan": root / "cgan", "diffusion": root / "diffusion"}


@pytest.mark.parametrize("producer", ["cgan", "diffusion"])
def test_load_dataset_webdataset_keeps_every_field_of_every_row(
    producer: str, all_sets: dict[str, Path], tmp_path: Path
) -> None:
    directory = all_sets[producer]
    ours = _ours(directory)
    kinds = {m["kind"] for m in ours.values()}
    assert kinds == {"hard", "pair_a", "pair_b"}
    datasets = _datasets()
    ds = datasets.load_dataset("webdataset", data_dir=str(directory), split="train", cache_dir=str(tmp_path))
    assert len(ds) == len(ours)
    for row in ds:
        meta = row["json"]
        assert set(meta) >= set(META_FIELDS), sorted(set(META_FIELDS) - set(meta))
        mine = ours[row["__key__"]]
        for key in META_FIELDS:  # every field of every row, as synthkit's reader reads it
            assert (
                meta[key] == pytest.approx(mine[key])
                if isinstance(mine[key], float)
                else meta[key] == mine[key]
            )
        if meta["kind"] == "hard":
            assert meta["pair_id"] is None and meta["pair_similarity"] is None
        else:
            assert isinstance(meta["pair_id"], int) and isinstance(meta["pair_similarity"], float)
            if producer == "diffusion":
                assert isinstance(meta["t_split"], float) and meta["branch_mode"] in ("noise", "sdedit")
    if producer == "diffusion":
        hard = [r["json"] for r in ds if r["json"]["kind"] == "hard"]
        assert all(isinstance(m["guidance_scale"], float) for m in hard)
    assert ds[0]["png"].size == (16, 16)  # an image feature, decoded by datasets


def test_the_metadata_tables_read_back_with_pandas_and_pyarrow(all_sets: dict[str, Path]) -> None:
    pd = _pandas()
    pq = pytest.importorskip("pyarrow.parquet")

    directory = all_sets["diffusion"]
    manifest = read_manifest(directory)
    info = manifest["metadata_tables"]
    assert info["format"] == "parquet" and info["columns"] == list(COLUMNS)
    assert [t["shard"] for t in info["tables"]] == [s["name"] for s in manifest["shards"]]
    assert [t["rows"] for t in info["tables"]] == [s["count"] for s in manifest["shards"]]
    df = pd.read_parquet(directory / "metadata")  # every table of the set at once
    ours = _ours(directory)
    assert sorted(df["__key__"]) == sorted(ours)
    for row in df.to_dict("records"):
        mine = ours[row["__key__"]]
        assert row["kind"] == mine["kind"] and row["hardness"] == pytest.approx(mine["hardness"])
        assert pd.isna(row["pair_id"]) if mine["pair_id"] is None else row["pair_id"] == mine["pair_id"]
    # a query that needs no tar: the hardest hard samples
    hardest = df[df.kind == "hard"].sort_values("hardness", ascending=False)
    assert len(hardest) == 6
    table = pq.read_table(directory / info["tables"][0]["name"])
    assert table.schema.field("pair_id").type == "int64" and table.schema.field("hardness").type == "double"
    assert verify_shard_set(directory).ok


def test_a_tampered_table_fails_verify(all_sets: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(all_sets["cgan"], copy)
    (copy / "metadata" / "000000.parquet").write_bytes(b"PAR1 not a table")
    report = verify_shard_set(copy)
    assert not report.ok and any("metadata/000000.parquet" in p for p in report.problems)


def test_a_converted_set_loads_with_data_dir_and_keeps_cls(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    argv = ["shards", "convert", "--data", "digits", "--size", "8", "--split", "test", "--out", str(out)]
    assert main([*argv, "--no-progress", "--maxcount", "100"]) == 0
    manifest = read_manifest(out)
    assert manifest["name"].startswith("digits-8px-") and manifest["name"].endswith("-test")
    ds = _datasets().load_dataset("webdataset", data_dir=str(out), cache_dir=str(tmp_path / "c"))
    assert list(ds) == ["test"] and len(ds["test"]) == manifest["total"]  # the split from the name
    row = ds["test"][7]
    assert row["__key__"] == f"{manifest['name']}_00000007" and isinstance(row["cls"], int)
    assert row["json"]["index"] == 7 and row["json"]["split"] == "test" and row["json"]["hardness"] is None


def test_set_names_and_keys_are_unique_per_export(trained_run: Path, tmp_path: Path, capsys) -> None:
    a = _generate(trained_run, tmp_path / "a", "--n", "4", "--seed", "1")
    b = _generate(trained_run, tmp_path / "b", "--n", "4", "--seed", "2")
    again = _generate(trained_run, tmp_path / "c", "--n", "4", "--seed", "1")
    capsys.readouterr()
    assert a["name"] != b["name"] and a["name"] == again["name"]  # the same request, the same name
    assert a["name"].endswith("-train") and a["name"].startswith("hsg-cgan-")
    keys_a = set(_ours(tmp_path / "a"))
    assert not keys_a & set(_ours(tmp_path / "b"))
    assert all(k.startswith(a["name"] + "_") for k in keys_a)
    assert [s["name"] for s in a["shards"]] == [f"{a['name']}-000000.tar"]


def test_csv_tables_without_pyarrow(tmp_path: Path) -> None:
    """The CSV fallback (used where pyarrow is not installed) holds the same columns, null as empty."""
    rows = [
        {c: None for c in COLUMNS}
        | {"__key__": "k_0", "shard": "s-000000.tar", "kind": "hard", "hardness": 4.5},
        {c: None for c in COLUMNS}
        | {"__key__": "k_1", "shard": "s-000000.tar", "kind": "pair_a", "pair_id": 0},
    ]
    pd = _pandas()
    entry = write_table(tmp_path, 0, encode_table(rows, "csv"), len(rows), "csv")
    assert entry["name"] == "metadata/000000.csv" and entry["rows"] == 2
    df = pd.read_csv(tmp_path / entry["name"])
    assert list(df.columns) == list(COLUMNS)
    assert df.loc[0, "hardness"] == 4.5 and pd.isna(df.loc[0, "pair_id"]) and df.loc[1, "pair_id"] == 0
    assert json.loads(json.dumps(entry))["sha256"]


def test_a_name_of_your_own_without_a_split_word_loads_with_data_files(tmp_path: Path) -> None:
    """shards/README.md: such a set's JSON files would be read as tars with data_dir; data_files avoids it."""
    out = tmp_path / "plain"
    argv = ["shards", "convert", "--data", "digits", "--size", "8", "--split", "test", "--name", "plain"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    ds = _datasets().load_dataset(
        "webdataset", data_files=str(out / "*.tar"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert len(ds) == 360 and ds[0]["__key__"] == "plain_00000000"

"""Pipeline configuration: defaults, YAML round trips, shipped pipelines, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from synthkit.config import (
    AuditConfig,
    ConditionsConfig,
    ConfigError,
    DataConfig,
    EncoderConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    HPGConfig,
    HSGConfig,
    MixConfig,
    PipelineConfig,
    RemoteConfig,
    SimCLRConfig,
    TrainConfig,
    ViewsConfig,
    dump_yaml,
    from_dict,
    load_pipeline,
    parse_overrides,
    save_pipeline,
    to_dict,
)
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.registry import PRODUCERS

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def assert_names(excinfo: pytest.ExceptionInfo[ConfigError], key: str) -> None:
    """The message names ``key`` as a whole dotted token (``train.epoch`` must not match ``train.epochs``)."""
    msg = str(excinfo.value)
    assert re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", msg), f"{key!r} not named in: {msg}"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- defaults and round trips


def test_defaults_construct_every_stage() -> None:
    cfg = PipelineConfig()
    stages = {
        "data": DataConfig,
        "views": ViewsConfig,
        "encoder": EncoderConfig,
        "objective": SimCLRConfig,
        "generator": CGanConfig,
        "conditions": ConditionsConfig,
        "hsg": HSGConfig,
        "hpg": HPGConfig,
        "train": TrainConfig,
        "export": ExportConfig,
        "eval": EvalConfig,
        "mix": MixConfig,
        "remote": RemoteConfig,
    }
    assert [f.name for f in dataclasses.fields(cfg)] == list(stages)
    for name, cls in stages.items():
        assert getattr(cfg, name) == cls()
    assert from_dict({}) == cfg
    assert load_pipeline(None) == cfg


def _non_default() -> PipelineConfig:
    d = PipelineConfig()
    return dataclasses.replace(
        d,
        data=dataclasses.replace(d.data, name="folder", root="/tmp/imgs", channels=3, subset=50, size=28),
        views=dataclasses.replace(d.views, crop_scale=(0.5, 0.75), grayscale_p=0.0),
        generator=dataclasses.replace(d.generator, betas=(0.5, 0.99), diffaugment="translation", lr_g=1e-5),
        conditions=dataclasses.replace(d.conditions, mode="none", k=3),
        hsg=dataclasses.replace(d.hsg, enabled=False, lambda_hard=2.5),
        train=dataclasses.replace(d.train, epochs=3, weight_decay=0.0, mixed_precision="bf16"),
    )


@pytest.mark.parametrize("cfg", [PipelineConfig(), _non_default()], ids=["defaults", "non-default"])
def test_yaml_round_trip(cfg: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path, dump_yaml(cfg))
    back = load_pipeline(path)
    assert back == cfg
    assert isinstance(back.views.crop_scale, tuple) and isinstance(back.generator.betas, tuple)
    save_pipeline(cfg, tmp_path / "saved.yaml")
    assert load_pipeline(tmp_path / "saved.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_shipped_pipelines_exist() -> None:
    assert {p.name for p in PIPELINES.glob("*.yaml")} >= {"quickstart.yaml", "fashion-mnist-hsg.yaml"}


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_load(path: Path) -> None:
    cfg = load_pipeline(path)
    assert isinstance(cfg, PipelineConfig)
    # every key the file sets is honoured, not silently replaced by a default
    import yaml

    raw = yaml.safe_load(path.read_text())
    resolved = to_dict(cfg)
    for section, values in raw.items():
        for key, value in values.items():
            assert resolved[section][key] == value, f"{section}.{key}"


def test_quickstart_pipeline_equals_defaults() -> None:
    assert load_pipeline(PIPELINES / "quickstart.yaml") == PipelineConfig()


# --------------------------------------------------------------------------- unknown keys


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({"trian": {"epochs": 3}})
    assert_names(e, "trian")


def test_unknown_key_inside_section_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"epoch": 3}})
    assert_names(e, "train.epoch")


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_pipeline(write(tmp_path, "hsg:\n  lambda: 2.0\n"))
    assert_names(e, "hsg.lambda")


# --------------------------------------------------------------------------- types

WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    ({"train": {"epochs": "3"}}, "train.epochs"),
    ({"train": {"epochs": 3.0}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),  # bool is not an int here
    ({"train": {"lr": False}}, "train.lr"),  # nor a float
    ({"hsg": {"enabled": 1}}, "hsg.enabled"),
    ({"hsg": {"enabled": "yes please"}}, "hsg.enabled"),
    ({"data": {"name": 3}}, "data.name"),
    ({"data": {"channels": "3"}}, "data.channels"),
    ({"data": {"subset": 1.5}}, "data.subset"),
    ({"views": {"crop_scale": [0.5]}}, "views.crop_scale"),
    ({"views": {"crop_scale": [0.1, 0.5, 1.0]}}, "views.crop_scale"),
    ({"views": {"crop_scale": 0.5}}, "views.crop_scale"),
    ({"views": {"crop_scale": ["a", 1.0]}}, "views.crop_scale[0]"),
    ({"generator": {"betas": [0.0, "0.9"]}}, "generator.betas[1]"),
    ({"train": [1, 2]}, "train"),
    ({"encoder": "convnet"}, "encoder"),
]


@pytest.mark.parametrize(("raw", "key"), WRONG_TYPES, ids=[f"{k}={r}" for r, k in WRONG_TYPES])
def test_wrong_type_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert_names(e, key)


def test_int_is_accepted_and_converted_for_float() -> None:
    cfg = from_dict({"train": {"lr": 1}, "views": {"crop_scale": [1, 1]}, "hsg": {"lambda_hard": 3}})
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.views.crop_scale == (1.0, 1.0) and all(type(v) is float for v in cfg.views.crop_scale)
    assert type(cfg.hsg.lambda_hard) is float


def test_optional_fields_accept_null() -> None:
    cfg = from_dict({"data": {"channels": None, "subset": None, "root": None}})
    assert cfg.data == DataConfig()


# --------------------------------------------------------------------------- values

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision"),
    ({"data": {"name": "mnist"}}, "data.name"),
    ({"data": {"size": 4}}, "data.size"),
    ({"data": {"channels": 2}}, "data.channels"),
    ({"data": {"name": "folder"}}, "data.root"),
    ({"views": {"flip_p": 1.5}}, "views.flip_p"),
    ({"views": {"grayscale_p": -0.1}}, "views.grayscale_p"),
    ({"views": {"crop_scale": [0.9, 0.5]}}, "views.crop_scale"),
    ({"views": {"crop_scale": [0.0, 0.5]}}, "views.crop_scale"),
    ({"objective": {"temperature": 0.0}}, "objective.temperature"),
    ({"encoder": {"backbone": "vit"}}, "encoder.backbone"),
    ({"generator": {"diffaugment": "color,zoom"}}, "generator.diffaugment"),
    ({"generator": {"ema_decay": 1.0}}, "generator.ema_decay"),
    ({"conditions": {"k": 0}}, "conditions.k"),
    ({"hsg": {"synthetic_ratio": 0.0}}, "hsg.synthetic_ratio"),
    ({"hsg": {"lambda_hard": -1.0}}, "hsg.lambda_hard"),
    ({"export": {"name": "a b"}}, "export.name"),
]


@pytest.mark.parametrize(("raw", "key"), BAD_VALUES, ids=[f"{k}={r}" for r, k in BAD_VALUES])
def test_bad_value_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert_names(e, key)


def test_constructors_validate_too() -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(lr=-1.0)
    assert_names(e, "train.lr")
    with pytest.raises(ConfigError) as e:
        ViewsConfig(crop_scale=(0.8, 0.2))
    assert_names(e, "views.crop_scale")


def test_labels_mode_needs_explicit_opt_in() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({"conditions": {"mode": "labels"}})
    assert_names(e, "conditions.mode")
    assert "allow_labels" in str(e.value)
    cfg = from_dict({"conditions": {"mode": "labels", "allow_labels": True}})
    assert cfg.conditions.mode == "labels" and cfg.conditions.allow_labels


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_reads_yaml_values() -> None:
    nested = parse_overrides(
        ["--train.epochs=3", "data.name=digits", "--views.crop_scale=[0.5, 1.0]", "--data.root=null",
         "--hsg.enabled=false", "--export.name=a=b"]
    )  # fmt: skip
    assert nested == {
        "train": {"epochs": 3},
        "data": {"name": "digits", "root": None},
        "views": {"crop_scale": [0.5, 1.0]},
        "hsg": {"enabled": False},
        "export": {"name": "a=b"},
    }


def test_overrides_beat_file_values_and_keep_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 7\n  batch_size: 64\nhsg:\n  lambda_hard: 2.0\n")
    cfg = load_pipeline(path, ["--train.epochs=3", "--encoder.width=8"])
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == 64 and cfg.hsg.lambda_hard == 2.0
    assert cfg.encoder.width == 8
    assert cfg.train.lr == TrainConfig().lr
    assert load_pipeline(path).train.epochs == 7  # the file itself is untouched


def test_overrides_are_validated_like_the_file() -> None:
    with pytest.raises(ConfigError) as e:
        load_pipeline(None, ["--train.epochs=three"])
    assert_names(e, "train.epochs")
    with pytest.raises(ConfigError) as e:
        load_pipeline(None, ["--train.epoch=3"])
    assert_names(e, "train.epoch")


@pytest.mark.parametrize(
    "item", ["--train", "--epochs=3", "--a.b.c=1", "--.epochs=3", "--train.=3", "--train.epochs=[1"]
)
def test_malformed_override_is_an_error(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_overrides([item])
    with pytest.raises(ConfigError):
        load_pipeline(None, [item])


def test_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    assert load_pipeline(None, ["--train.lr=1e-3"]).train.lr == 1e-3
    assert load_pipeline(write(tmp_path, "train:\n  lr: 1e-3\n")).train.lr == 1e-3


# --------------------------------------------------------------------------- files


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_pipeline(path)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: [1\n", "broken.yaml")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_pipeline(path)


@pytest.mark.parametrize("text", ["- train\n- data\n", "42\n", "just a string\n"])
def test_non_mapping_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, "list.yaml")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_pipeline(path)


def test_empty_file_and_null_section_are_errors(tmp_path: Path) -> None:
    # an empty document or a section with no keys is a mistake more often than a wish for defaults
    empty = write(tmp_path, "", "empty.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{empty}") + ".*empty"):
        load_pipeline(empty)
    with pytest.raises(ConfigError, match=r"train: is empty \(null\)"):
        load_pipeline(write(tmp_path, "train:\n", "section.yaml"))
    assert load_pipeline(write(tmp_path, "train: {}\n", "explicit.yaml")) == PipelineConfig()


# --------------------------------------------------------------------------- immutability


def test_configs_are_frozen() -> None:
    cfg = PipelineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = TrainConfig(epochs=3)  # type: ignore[misc]
    assert cfg == PipelineConfig()


def test_generator_betas_and_image_size_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"\bgenerator\.betas\b"):
        load_pipeline(None, ["--generator.betas=[1.5, 0.9]"])
    with pytest.raises(ConfigError, match=r"\bdata\.size\b"):
        load_pipeline(None, ["--data.size=9"])
    # without a generator any size >= 8 is fine
    assert load_pipeline(None, ["--data.size=9", "--hsg.enabled=false"]).data.size == 9


def test_override_does_not_hide_a_broken_file_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\btrain\b"):
        load_pipeline(write(tmp_path, "train: 5\n"), ["--train.epochs=3"])


def test_mix_sources_are_a_list_of_specs() -> None:
    cfg = load_pipeline(None, ['--mix.sources=["real=/a:0.7", "syn=/b:0.3"]', "--hsg.enabled=false"])
    assert cfg.mix.sources == ("real=/a:0.7", "syn=/b:0.3")
    with pytest.raises(ConfigError, match=r"\bmix\.sources\b"):
        load_pipeline(None, ["--mix.sources=real", "--hsg.enabled=false"])
    with pytest.raises(ConfigError, match=r"mix\.sources\[0\]"):
        load_pipeline(None, ["--mix.sources=[3]", "--hsg.enabled=false"])
    with pytest.raises(ConfigError, match="NAME=DIR:WEIGHT"):
        load_pipeline(None, ['--mix.sources=["nocolon"]', "--hsg.enabled=false"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--hpg.schedule=exponential", "hpg.schedule: 'exponential' is not one of linear, cosine, adaptive"),
        ("--hpg.s_start=0.3", "hpg.s_start/s_end"),
        ("--objective.name=byol", "objective.name: 'byol' is not one of simclr, moco"),
        ("--objective.name=moco --objective.moco_momentum=1.0", "objective.moco_momentum"),
        (
            "--generator.kind=naive --generator.run=R --hsg.enabled=false --generator.synthetic_ratio=0",
            "generator.synthetic_ratio",
        ),
    ],
)
def test_hpg_moco_naive_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_pipeline(None, override.split())


# --------------------------------------------------------------------------- where each section lives


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["--generator.kind=diffusion"],
        ["--generator.kind=naive", "--generator.run=R", "--hsg.enabled=false"],
        ["--remote.attempts=3", "--objective.name=moco"],
    ],
    ids=["cgan", "diffusion", "naive", "remote-moco"],
)
def test_loading_a_config_imports_no_model_code(overrides: list[str]) -> None:
    """Config loading is the command line's fast path (checked before work starts): every section, each
    producer kind's included, is built without importing torch, diffusers or the shard reader."""
    code = (
        "import sys; from synthkit.config import load_pipeline; "
        f"cfg = load_pipeline(None, {overrides!r}); "
        "heavy = sorted(m for m in ('torch', 'diffusers', 'synthkit.shards', 'synthkit.producers.cgan') "
        "if m in sys.modules); print(type(cfg.generator).__module__, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    module, heavy = out.split(" ", 1)
    assert module.startswith("synthkit.producer_configs."), module
    assert heavy.strip() == "[]", heavy


def test_each_built_in_kind_has_its_config_module() -> None:
    """A kind's config class is registered by its own light module's path, and a section naming the kind
    is built from that class."""
    sections = {
        "cgan": {"hsg": {"enabled": True}},
        "diffusion": {"hsg": {"enabled": True}},
        "naive": {"generator": {"run": "R"}, "hsg": {"enabled": False}},
    }
    for kind, raw in sections.items():
        cls = PRODUCERS.get(kind).config_class()
        assert cls.__module__ == f"synthkit.producer_configs.{kind}"
        generator = {"kind": kind, **raw.get("generator", {})}
        assert type(from_dict({**raw, "generator": generator}).generator) is cls
    assert type(PipelineConfig().generator) is CGanConfig  # the section left out: the default kind


def test_the_remote_policy_is_the_remote_section_at_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthkit.shards import location

    assert dataclasses.fields(location.RemotePolicy) == dataclasses.fields(RemoteConfig)
    assert dataclasses.asdict(location.RemotePolicy()) == dataclasses.asdict(RemoteConfig())
    cfg = load_pipeline(None, ["--remote.attempts=2", "--remote.backoff_s=0.5"])
    policy = location.RemotePolicy(**dataclasses.asdict(cfg.remote))
    assert (policy.attempts, policy.backoff_s, policy.read_timeout_s) == (2, 0.5, RemoteConfig.read_timeout_s)
    for bad, message in [
        ({"attempts": True}, "remote.attempts must be an integer >= 1, got True"),
        ({"backoff_s": -1.0}, "remote.backoff_s must be a number >= 0, got -1.0"),
        ({"connect_timeout_s": float("inf")}, "remote.connect_timeout_s must be a number > 0, got inf"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            RemoteConfig(**bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            location.RemotePolicy(**bad)
    # the environment's policy is checked the same way, and its error says where the value came from
    monkeypatch.setattr(location, "_policy", None)
    monkeypatch.setenv("SYNTHKIT_REMOTE_ATTEMPTS", "0")
    with pytest.raises(
        location.ShardError, match=r"remote.attempts must be .* SYNTHKIT_REMOTE_\* environment"
    ):
        location.remote_policy()


# --------------------------------------------------------------------------- synthkit generate's request


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"maxcount": 0}, "--maxcount must be a positive integer, got 0"),
        ({"n": True}, "--n must be a positive integer, got True"),
        ({"batch_size": -3}, "--batch-size must be a positive integer, got -3"),
        ({"seed": 2**63}, f"--seed must be an integer in [0, 2**63), got {2**63}"),
        ({"seed": -1}, "--seed must be an integer in [0, 2**63), got -1"),
        ({"kind": "pairs"}, "--kind must be one of hard, pair, all, got 'pairs'"),
        ({"part": (2, 2)}, "--part must be I/N with 0 <= I < N, got 2/2"),
        ({"part": (0, True)}, "--part must be I/N with 0 <= I < N, got 0/True"),
    ],
)
def test_generate_flags_are_named_as_flags(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        GenerateConfig(**given)


def test_generate_flags_over_the_run_export_section() -> None:
    section = ExportConfig(n=40, seed=7, maxcount=16, batch_size=8, name="run-set")
    asked = GenerateConfig(n=10, seed=0, kind="hard", part=(1, 3))
    assert asked.over(section) == GenerateConfig(
        n=10, seed=0, maxcount=16, batch_size=8, name="run-set", kind="hard", part=(1, 3)
    )
    assert GenerateConfig().over(ExportConfig()) == GenerateConfig(**dataclasses.asdict(ExportConfig()))
    assert GenerateConfig(seed=2**63 - 1).seed == 2**63 - 1  # the largest seed torch takes


def test_the_export_section_shares_the_flags_checks() -> None:
    for key, value in [("maxcount", 0), ("seed", 2**63), ("n", 1.5)]:
        with pytest.raises(ConfigError) as e:
            ExportConfig(**{key: value})
        assert_names(e, f"export.{key}")
        with pytest.raises(ConfigError, match=re.escape(f"--{key} ")):
            GenerateConfig(**{key: value})


# --------------------------------------------------------------------------- synthkit audit's config


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"k": 0}, "audit.k: must be >= 1"),
        ({"kid_subset_size": 1}, "audit.kid_subset_size: must be >= 2"),
        ({"ann_iters": -1}, "audit.ann_iters: must be >= 0"),
        ({"max_real": 1}, "audit.max_real: must be >= 2 or null"),
        ({"ann_nlist": 0}, "audit.ann_nlist: must be >= 1 or null"),
        ({"extractor": "clip"}, "audit.extractor: 'clip' is not one of auto, encoder, classifier"),
        ({"reference": "other"}, "audit.reference: 'other' is not one of auto, split, none"),
        ({"real_split": "val"}, "audit.real_split: 'val' is not one of train, test"),
        ({"k": 20, "prdc_sample": 20}, "audit.prdc_sample: must be > audit.k (20)"),
        ({"saturated_fraction": 0.0}, "audit.saturated_fraction: must be in (0, 1]"),
        ({"device": 0}, "audit.device: must be a device name or null"),
    ],
)
def test_audit_config_errors_name_the_key(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AuditConfig(**given)


def test_audit_config_accepts_null_limits() -> None:
    cfg = AuditConfig(max_samples=None, max_real=2, ann_nlist=None, ann_iters=0, device="cpu")
    assert (cfg.max_samples, cfg.max_real, cfg.ann_iters) == (None, 2, 0)

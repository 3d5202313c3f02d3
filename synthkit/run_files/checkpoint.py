"""Checkpoints that are published atomically and verified before use.

``accelerator.save_state`` writes models (safetensors), optimizers and RNG states; we add the loop's own
state as safetensors + JSON (never pickle), then a ``checksums.json`` of every file, and only then rename
the temporary directory to its final name. Before resuming, every file is checked against the checksums,
so a truncated or corrupt checkpoint fails with a message naming the file instead of resuming silently
from damaged state.

The checksums catch accidents, not a checkpoint edited by hand (or by a broken tool) and re-checksummed, so
:func:`check_structure` then checks every file against what this run's models expect before any of it is
used: each model file's keys, shapes and dtypes; each optimizer state's groups, parameters and per-parameter
tensors; the RNG states (each tried on a throw-away generator); the loop state's keys; and that every
file torch would unpickle refers only to tensor storage (its pickle is scanned without being run, then read
with ``weights_only``). A file that does not belong to a checkpoint at all is refused too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickletools
import random
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit.atomic import fsync_dir, replace_dir, write_text_atomic
from synthkit.errors import CheckpointError
from synthkit.provenance import sha256_file

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
PREFIX = "epoch_"


__all__ = ["CheckpointError", "check_structure", "foreign_files", "publish", "verify_checkpoint"]


def write_checksums(directory: Path) -> None:
    sums = {
        rel: {"sha256": sha256_file(directory / rel), "bytes": (directory / rel).stat().st_size}
        for rel in _files(directory)
    }
    write_text_atomic(directory / CHECKSUMS, json.dumps(sums, indent=2, sort_keys=True))


def _files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != CHECKSUMS
    )


def verify_checkpoint(directory: Path, *, allow_unlisted: bool = False) -> None:
    """Raise :class:`CheckpointError` naming the first problem found.

    ``checksums.json`` must list every file of the directory, each with its size and sha256: an empty or
    partial list, an entry of the wrong shape, a path that leaves the directory, a file that is not listed,
    missing, truncated or altered is refused, so no damaged or foreign state is ever resumed from.
    ``allow_unlisted``: only check what is listed (is what synthkit wrote here whole?).
    """
    directory = Path(directory)
    sums = _read_checksums(directory)
    for rel, expected in sums.items():
        _check_listed_file(directory, rel, expected)
    unlisted = sorted(set(_files(directory)) - set(sums))
    if unlisted and not allow_unlisted:
        raise CheckpointError(f"checkpoint {directory}: file {unlisted[0]} is not in {CHECKSUMS}")


def _read_checksums(directory: Path) -> dict[str, Any]:
    """The checkpoint's ``checksums.json``: a JSON object of at least one entry."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {CHECKSUMS} is missing")
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {directory}: {CHECKSUMS} is corrupt ({e})") from e
    if not isinstance(sums, dict) or not sums:
        raise CheckpointError(
            f"checkpoint {directory}: {CHECKSUMS} lists no files (expected one entry per file)"
        )
    return sums


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64


#: the fields of a checksums entry -> what each must be
_ENTRY_FIELDS: dict[str, Callable[[Any], bool]] = {"bytes": _is_count, "sha256": _is_sha256}


def _well_formed_entry(rel: str, expected: Any) -> bool:
    """A checksums entry: a relative path inside the checkpoint -> ``{"bytes": int, "sha256": 64 chars}``."""
    if not isinstance(expected, dict):
        return False
    if not all(valid(expected.get(key)) for key, valid in _ENTRY_FIELDS.items()):
        return False
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def _check_listed_file(directory: Path, rel: str, expected: Any) -> None:
    """One file ``checksums.json`` lists is there, of its size and sha256."""
    if not _well_formed_entry(rel, expected):
        raise CheckpointError(f"checkpoint {directory}: {CHECKSUMS} has a malformed entry for {rel!r}")
    path = directory / rel
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: file {rel} is missing")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CheckpointError(
            f"checkpoint {directory}: file {rel} is truncated or altered "
            f"({size} bytes, expected {expected['bytes']})"
        )
    if sha256_file(path) != expected["sha256"]:
        raise CheckpointError(f"checkpoint {directory}: file {rel} is corrupt (sha256 mismatch)")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Published checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:04d}"


def listed_files(directory: Path) -> set[str] | None:
    """The files ``checksums.json`` lists (what synthkit wrote there); None if it is missing or unreadable."""
    try:
        sums = json.loads((directory / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return set(sums) if isinstance(sums, dict) else None


def foreign_files(directory: Path) -> list[str]:
    """Files under ``directory`` that synthkit did not write there (not in its ``checksums.json``)."""
    if not directory.is_dir():
        return []
    listed = listed_files(directory)
    if listed is None:
        return _files(directory) if (directory / CHECKSUMS).exists() or _files(directory) else []
    return sorted(set(_files(directory)) - listed)


def remove_written(directory: Path) -> None:
    """Delete what synthkit wrote in ``directory`` (the files its checksums list, then empty folders), and
    the directory once empty; anything else stays, and the directory is then renamed ``NAME.kept-N`` so the
    name is free, with a warning."""
    listed = listed_files(directory) or set()
    for rel in sorted(listed) + [CHECKSUMS]:
        path = directory / rel
        if ".." not in Path(rel).parts and (path.is_file() or path.is_symlink()):
            path.unlink()
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    try:
        directory.rmdir()
    except OSError:
        n = 1
        while directory.with_name(f"{directory.name}.kept-{n}").exists():
            n += 1
        kept = directory.with_name(f"{directory.name}.kept-{n}")
        directory.rename(kept)
        logger.warning("%s held files synthkit did not write; they are kept in %s", directory, kept)


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Checksum ``tmp_dir`` and put it at ``final_dir`` in one step (:func:`synthkit.atomic.replace_dir`);
    of a directory it replaces, only what synthkit wrote is deleted."""
    write_checksums(tmp_dir)
    fsync_dir(tmp_dir)
    old = replace_dir(tmp_dir, final_dir)
    if old is not None:
        remove_written(old)


def prune(root: Path, keep: int) -> None:
    for old in checkpoint_dirs(root)[:-keep]:
        with contextlib.suppress(OSError):
            remove_written(old)


# ---------------------------------------------------------------------------------------------- structure
#: what may be referenced from the pickle inside a torch file of a checkpoint (tensors, their storage, the
#: containers accelerate's RNG state uses); anything else is refused before torch reads the file
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _safe_global(module: str, name: str) -> bool:
    if (module, name) in _SAFE_GLOBALS:
        return True
    if module == "torch" and (
        name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)
    ):
        return True
    return module == "numpy.dtypes" and name.endswith("DType")


def _pickle_globals(data: bytes) -> Iterable[tuple[str, str] | None]:
    """The globals a pickle refers to, read off its opcodes without running it (None: cannot tell)."""
    strings: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            yield module, attr
        elif name == "STACK_GLOBAL":
            ok = len(strings) >= 2 and all(isinstance(x, str) for x in strings[-2:])
            yield (strings[-2], strings[-1]) if ok else None
        elif name == "INST":
            yield None
        if "UNICODE" in name or "STRING" in name:
            strings.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = strings[-1] if strings else None
        elif name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(int(arg)))
        elif name != "STACK_GLOBAL":
            strings.append(None)


def load_torch_file(path: Path, what: str = "") -> Any:
    """A torch file of a checkpoint, read only if its pickle refers to tensor storage alone (scanned
    without being run), and then with ``weights_only``; any failure is one CheckpointError line naming the
    file (and ``what`` it is)."""
    where = f"checkpoint {path.parent}: {what + ' ' if what else ''}{path.name}"
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise CheckpointError(f"{where} is not a torch tensor file (no single data.pkl)")
            data = z.read(pickles[0])
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        raise CheckpointError(f"{where} is not a torch tensor file ({_first_line(e)})") from e
    try:
        for ref in _pickle_globals(data):
            if ref is None:
                raise CheckpointError(
                    f"{where} holds a pickle that refers to something it does not name (refused; nothing "
                    "of it was run)"
                )
            if not _safe_global(*ref):
                raise CheckpointError(
                    f"{where} is not tensor-only: its pickle refers to {ref[0]}.{ref[1]} (refused; nothing "
                    "of it was run)"
                )
    except (ValueError, EOFError) as e:  # pickletools on a damaged stream
        raise CheckpointError(f"{where} holds a damaged pickle ({_first_line(e)})") from e
    from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True) + numpy arrays

    try:
        return accelerate_load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - whatever torch raises for a damaged or refused file
        raise CheckpointError(f"{where} cannot be read ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def safetensors_layout(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Keys -> (shape, dtype name) of a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                s = f.get_slice(key)
                out[key] = (tuple(int(d) for d in s.get_shape()), str(s.get_dtype()))
            return out
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} is not a safetensors file ({_first_line(e)})"
        ) from e


_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def tensor_layout(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """What a safetensors file of ``state`` holds: keys -> (shape, dtype name), and the keys that may be
    left out as aliases (they share storage with a key kept; accelerate drops them) -> that key."""
    layout, aliases, seen = {}, {}, {}
    for k, v in state.items():
        layout[k] = (tuple(v.shape), _ST_DTYPES.get(v.dtype, str(v.dtype)))
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if ptr is not None and ptr in seen:
            aliases[k] = seen[ptr]
        elif ptr is not None:
            seen[ptr] = k
    return layout, aliases


def check_tensors(
    path: Path,
    expected: dict[str, tuple[tuple[int, ...], str]],
    aliases: dict[str, str] | None = None,
    owner: str = "this run's models",
) -> None:
    """A safetensors file holds exactly ``expected`` (keys, shapes, dtypes), aliases aside."""
    where = f"checkpoint {path.parent}: {path.name}"
    if not path.is_file():
        raise CheckpointError(f"{where} is missing")
    found = safetensors_layout(path)
    aliases = aliases or {}
    extra = sorted(set(found) - set(expected))
    missing = sorted(k for k in set(expected) - set(found) if aliases.get(k) not in found)
    problem = ""
    if extra:
        problem = f"it holds {extra[0]!r}, which {owner} lack"
    elif missing:
        problem = f"it lacks {missing[0]!r} ({len(missing)} key(s) missing)"
    else:
        for key, (shape, dtype) in found.items():
            if (shape, dtype) != expected[key]:
                want_shape, want_dtype = expected[key]
                problem = f"{key!r} is {dtype} {list(shape)}, {owner} need {want_dtype} {list(want_shape)}"
                break
    if problem:
        raise CheckpointError(f"{where} does not fit {owner}: {problem}")


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, torch.Tensor) and value.numel() == 1


#: per-parameter state an optimizer of this class cannot step without
_OPTIMIZER_STATE = {"Adam": {"step", "exp_avg", "exp_avg_sq"}, "AdamW": {"step", "exp_avg", "exp_avg_sq"}}


def check_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """An optimizer state file fits ``optimizer``: the same groups and parameters, plain hyperparameters,
    and per parameter the tensors its class steps with, each a scalar or of its parameter's shape."""
    where = f"checkpoint {path.parent}: {path.name}"
    if not path.is_file():
        raise CheckpointError(f"{where} is missing")
    saved = _optimizer_state(load_torch_file(path, "the optimizer state"), where)
    inner = getattr(optimizer, "optimizer", optimizer)
    groups = saved["param_groups"]
    params = _check_param_groups(where, groups, optimizer.state_dict()["param_groups"], inner)
    _check_parameter_states(where, saved["state"], params, _needed_state(inner, groups))


def _optimizer_state(saved: Any, where: str) -> dict[str, Any]:
    """``saved`` is a mapping of exactly ``state`` and ``param_groups`` (what ``state_dict`` returns)."""
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        keys = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(
            f"{where} is not an optimizer state (holds {keys}; expected state, param_groups)"
        )
    return saved


def _check_param_groups(
    where: str, groups: Any, live: list[dict[str, Any]], inner: torch.optim.Optimizer
) -> dict[int, torch.Tensor]:
    """The saved parameter groups match the live optimizer's one for one; returns parameter id -> the
    parameter it stands for."""
    if not isinstance(groups, list) or len(groups) != len(live):
        raise CheckpointError(
            f"{where} has {len(groups) if isinstance(groups, list) else 'no'} parameter group(s), this run's "
            f"optimizer {len(live)}"
        )
    params: dict[int, torch.Tensor] = {}
    for i, (group, want, obj) in enumerate(zip(groups, live, inner.param_groups, strict=True)):
        _check_param_group(f"{where}: parameter group {i}", group, want, type(inner).__name__)
        params.update(zip(want["params"], obj["params"], strict=True))
    return params


def _may_be_absent(default: Any) -> bool:
    """A hyperparameter whose live value is None or a flag may be missing from a saved group (torch adds
    such options over its versions, and a state saved before one existed still loads)."""
    return default is None or isinstance(default, bool)


def _check_param_group(where: str, group: Any, want: dict[str, Any], optimizer_class: str) -> None:
    """One saved parameter group has the live group's keys, its parameter ids and plain hyperparameters."""
    if not isinstance(group, dict):
        raise CheckpointError(f"{where} is not a mapping")
    missing = [k for k in want if k not in group and not _may_be_absent(want[k])]
    if missing:
        raise CheckpointError(f"{where} lacks {missing[0]!r}")
    extra = [k for k in group if k not in want]
    if extra:
        raise CheckpointError(f"{where} holds {extra[0]!r}, unknown to {optimizer_class}")
    if group["params"] != want["params"]:
        n = len(group["params"]) if isinstance(group["params"], list) else "?"
        raise CheckpointError(f"{where} lists {n} parameters, this run's optimizer {len(want['params'])}")
    bad = [k for k, v in group.items() if k != "params" and not _plain(v)]
    if bad:
        raise CheckpointError(f"{where} has a malformed {bad[0]!r}")


def _needed_state(inner: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> set[str] | None:
    """The per-parameter state keys ``inner``'s class steps with (None: not known for this class)."""
    needed = _OPTIMIZER_STATE.get(type(inner).__name__)
    if needed is not None and any(bool(g.get("amsgrad")) for g in groups):
        needed = needed | {"max_exp_avg_sq"}
    return needed


def _check_parameter_states(
    where: str, state: Any, params: dict[int, torch.Tensor], needed: set[str] | None
) -> None:
    """Every saved per-parameter state belongs to a parameter of this optimizer and fits it."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: its per-parameter state is not a mapping")
    for pid, entry in state.items():
        if pid not in params:
            raise CheckpointError(
                f"{where} holds state for parameter {pid!r}, which this run's optimizer lacks"
            )
        _check_parameter_state(where, pid, entry, params[pid], needed)


def _check_parameter_state(
    where: str, pid: int, entry: Any, param: torch.Tensor, needed: set[str] | None
) -> None:
    """One parameter's state: a mapping of the ``needed`` keys to tensors that fit ``param``."""
    if not isinstance(entry, dict) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
        raise CheckpointError(f"{where}: the state of parameter {pid} is not a mapping of tensors")
    if needed is not None and set(entry) != needed:
        lack = sorted(needed - set(entry))
        what = f"lacks {lack[0]!r}" if lack else f"holds {sorted(set(entry) - needed)[0]!r}"
        raise CheckpointError(f"{where}: the state of parameter {pid} {what}")
    for key, t in entry.items():
        _check_state_tensor(f"{where}: {key} of parameter {pid}", t, param)


def _check_state_tensor(what: str, t: torch.Tensor, param: torch.Tensor) -> None:
    """A scalar (a step count) is finite; anything else has its parameter's shape and dtype."""
    if t.numel() == 1 and t.dim() <= 1:
        if t.is_floating_point() and not math.isfinite(float(t)):
            raise CheckpointError(f"{what} is not finite")
        return
    if tuple(t.shape) != tuple(param.shape) or t.dtype != param.dtype:
        raise CheckpointError(
            f"{what} is {t.dtype} {list(t.shape)}, the parameter {param.dtype} {list(param.shape)}"
        )


#: the generator states of an accelerate RNG state file -> how each is tried on a throw-away generator
_RNG_TRIES: dict[str, Callable[[Any], Any]] = {
    "random_state": lambda v: random.Random().setstate(v),
    "numpy_random_seed": lambda v: np.random.RandomState().set_state(v),
    "torch_manual_seed": lambda v: torch.Generator().set_state(v),
}


def check_rng_state(path: Path) -> None:
    """An accelerate RNG state file: each generator's state is tried on a throw-away generator."""
    where = f"checkpoint {path.parent}: the RNG state {path.name}"
    if not path.is_file():
        raise CheckpointError(f"{where} is missing")
    states = load_torch_file(path, "the RNG state")
    if not isinstance(states, dict):
        raise CheckpointError(f"{where} is not an RNG state (a {type(states).__name__})")
    lack = [k for k in _RNG_TRIES if k not in states]
    if lack:
        raise CheckpointError(f"{where} lacks {lack[0]!r}")
    for key, attempt in _RNG_TRIES.items():
        try:
            attempt(states[key])
        except Exception as e:  # noqa: BLE001 - each library raises its own type
            raise CheckpointError(f"{where}: {key} is not a valid state ({_first_line(e)})") from e
    for key, value in states.items():
        _check_rng_entry(where, key, value)


def _check_rng_entry(where: str, key: str, value: Any) -> None:
    """Any other entry of an RNG state file: the step, a device's generators, or the TPU seed."""
    if key in _RNG_TRIES or key == "xm_seed":  # tried above / an int accelerate writes on a TPU
        return
    if key == "step":
        if not _is_count(value) or value < 0:
            raise CheckpointError(f"{where}: step is {value!r}, not a count")
        return
    if not key.startswith("torch_"):
        raise CheckpointError(f"{where} holds {key!r}, which is not an RNG state")
    values = value if isinstance(value, (list, tuple)) else [value]  # a device's generators
    if not all(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in values):
        raise CheckpointError(f"{where}: {key} is not a generator state")


def check_scaler(path: Path, expected_keys: set[str]) -> None:
    where = f"checkpoint {path.parent}: {path.name}"
    if not path.is_file():
        raise CheckpointError(f"{where} is missing")
    state = load_torch_file(path)
    if (
        not isinstance(state, dict)
        or set(state) != expected_keys
        or not all(_plain(v) for v in state.values())
    ):
        raise CheckpointError(f"{where} is not this run's gradient scaler state")


def check_json(path: Path, keys: set[str] | None = None) -> dict[str, Any]:
    """A JSON object (with exactly ``keys``, when given)."""
    where = f"checkpoint {path.parent}: {path.name}"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{where} is missing") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where} is not JSON ({_first_line(e)})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    if keys is not None and set(obj) != keys:
        lack = sorted(keys - set(obj))
        what = f"lacks {lack[0]!r}" if lack else f"holds {sorted(set(obj) - keys)[0]!r}, which it never has"
        raise CheckpointError(f"{where} {what}")
    return obj


_ACCELERATE_FILES = re.compile(
    r"(model|optimizer)(_\d+)?\.(safetensors|bin)|random_states_\d+\.pkl|scaler\.pt"
)


def check_file_names(directory: Path, own: Iterable[str], prefixes: tuple[str, ...]) -> None:
    """Every file is one a checkpoint holds: accelerate's, ``own`` names, or ``prefixes`` (the producer's)."""
    own = set(own) | {CHECKSUMS}
    for rel in _files(directory):
        if rel in own or rel.startswith(prefixes) or _ACCELERATE_FILES.fullmatch(rel):
            continue
        raise CheckpointError(f"checkpoint {directory}: {rel} is not a file of a synthkit checkpoint")


def check_structure(
    directory: Path,
    *,
    models: list[torch.nn.Module],
    optimizers: list[torch.optim.Optimizer],
    rank: int,
    scaler: Any = None,
    tensors: dict[str, dict[str, tuple[tuple[int, ...], str]]] | None = None,
    json_keys: dict[str, set[str]] | None = None,
    own_prefixes: tuple[str, ...] = (),
) -> None:
    """Check every file of a checkpoint against this run before any of it is used (see the module).

    ``models``/``optimizers``: accelerate's, in its order (``model_N.safetensors``, ``optimizer_N.bin``);
    ``rank``: this process (its RNG state file must be there; every one present is checked); ``scaler``:
    accelerate's gradient scaler, if any; ``tensors``: other safetensors files -> their layout;
    ``json_keys``: JSON files -> their exact keys; ``own_prefixes``: names left to their owner (the
    producer's ``producer_*`` files, checked by its ``load_state``) beyond being readable.
    """
    directory = Path(directory)
    tensors, json_keys = tensors or {}, json_keys or {}
    check_file_names(directory, [*tensors, *json_keys, "config.yaml"], own_prefixes)
    for i, model in enumerate(models):
        layout, aliases = tensor_layout(model.state_dict())
        check_tensors(directory / _accelerate_name("model", i, ".safetensors"), layout, aliases)
    for i, opt in enumerate(optimizers):
        check_optimizer(directory / _accelerate_name("optimizer", i, ".bin"), opt)
    _check_rng_states(directory, rank)
    _check_scaler_use(directory, scaler)
    for name, layout in tensors.items():
        check_tensors(directory / name, layout, owner="this run")
    for name, keys in json_keys.items():
        check_json(directory / name, keys)
    _check_own_files(directory, own_prefixes)


def _accelerate_name(stem: str, index: int, suffix: str) -> str:
    """The file ``accelerate.save_state`` writes for its ``index``-th model or optimizer."""
    return f"{stem}{suffix}" if index == 0 else f"{stem}_{index}{suffix}"


def _check_rng_states(directory: Path, rank: int) -> None:
    """Every process's RNG state present is one, and this process's is there."""
    present = sorted(directory.glob("random_states_*.pkl"))
    for path in present:
        check_rng_state(path)
    if not (directory / f"random_states_{rank}.pkl").is_file():
        raise CheckpointError(
            f"checkpoint {directory} was written by {len(present)} process(es) and holds no RNG state for "
            f"process {rank}: resume it with {len(present)} process(es)"
        )


def _check_scaler_use(directory: Path, scaler: Any) -> None:
    """A gradient scaler's state is there exactly when this run has one with a state to restore."""
    scaler_state = scaler.state_dict() if scaler is not None else {}
    if scaler_state:
        check_scaler(directory / "scaler.pt", set(scaler_state))
    elif (directory / "scaler.pt").exists():
        raise CheckpointError(
            f"checkpoint {directory}: scaler.pt is not used by this run (mixed precision differs?)"
        )


#: the kinds of file left to their owner (the producer) -> how each is checked to be readable here
_OWN_FILE_CHECKS: tuple[tuple[str, Callable[[Path], Any]], ...] = (
    (".safetensors", safetensors_layout),
    (".json", check_json),
)


def _check_own_files(directory: Path, own_prefixes: tuple[str, ...]) -> None:
    """Files left to their owner are of a kind a checkpoint holds, and readable as that kind."""
    for rel in _files(directory):
        if not rel.startswith(own_prefixes):
            continue
        check = next((c for ending, c in _OWN_FILE_CHECKS if rel.endswith(ending)), None)
        if check is None:
            raise CheckpointError(f"checkpoint {directory}: {rel} is not a file of a synthkit checkpoint")
        check(directory / rel)

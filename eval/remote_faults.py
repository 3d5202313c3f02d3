"""Remote storage faults against every consumer: a table of what happened, the tries, and the time.

A shard set (the embedded digits at 16 px: 256 images in 8 shards of 32) is served on 127.0.0.1 by the
fault-injection server of the test suite (``tests/faultserver.py``), and each fault is aimed at one shard
(the second). Consumers:

* ``verify``: ``verify_shard_set(URL)`` (``synthkit shards verify URL``);
* ``train``: a real ``synthkit train`` (``loop.train``) streaming the set (``--data real=URL:1``, plain CL,
  1 epoch), its final encoder compared with the same run over the local set;
* ``audit``: ``synthkit audit URL`` (pixel features), its metrics compared with the audit of the local set;
* ``export``: ``shards convert --out s3://...`` to moto's S3 server through the fault server as a proxy,
  the fault aimed at the PUT of the second shard; the published set is verified and compared with a local
  conversion.

A cell reads ``ok`` (the result equals the fault-free one: same verified samples, same weights, same
metrics, same uploaded bytes) or the one-line error (shortened), then ``tries`` (requests that reached the
faulted file) and the seconds the consumer took (the fault-free time is the first row). The retry
settings are small so that the table is quick (``--attempts 4 --read-timeout 2``, backoff 0.25 s doubling
to 2 s); the defaults (6 tries, 30 s, 1 s to 30 s) scale the timeouts, not the outcome.

Second part: a training run streaming a bigger set through a server that drops every tenth request, and
the same run from the local directory: final weights compared, requests and drops counted.

    OMP_NUM_THREADS=1 python eval/remote_faults.py [--out eval/results/remote_faults.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faultserver import FaultServer, Rule  # noqa: E402

SHARD = "-train-000001.tar"


def _policy_flags(args: argparse.Namespace) -> dict[str, float]:
    return {
        "attempts": args.attempts,
        "connect_timeout_s": 2.0,
        "read_timeout_s": args.read_timeout,
        "min_bytes_per_s": 4096,
        "backoff_s": 0.25,
        "backoff_max_s": 2.0,
    }


# Faults: (row label, rule for reads, rule for uploads or None, what it is)
T, P = "transient", "permanent"
FAULTS: list[tuple[str, Rule | None, Rule | None, str]] = [
    ("none", None, None, "no fault (the time to compare with)"),
    ("drop mid-body, once", Rule("drop", path=SHARD, times=1), Rule("drop", "PUT", SHARD, 1), T),
    ("incomplete body, once", Rule("short", path=SHARD, times=1), None, T),
    ("wrong length (half announced), once", Rule("truncate", path=SHARD, times=1), None, T),
    ("stall mid-body, once", Rule("stall", path=SHARD, times=1), None, T),
    ("no response, once", Rule("silent", path=SHARD, times=1), Rule("silent", "PUT", SHARD, 1), T),
    ("trickle (200 B/s), once", Rule("trickle", path=SHARD, times=1), None, T),
    ("HTTP 503 twice", Rule("status:503", path=SHARD, times=2), Rule("status:503", "PUT", SHARD, 2), T),
    ("HTTP 500 always", Rule("status:500", path=SHARD), Rule("status:500", "PUT", SHARD), "stays"),
    ("stall always", Rule("stall", path=SHARD), Rule("silent", "PUT", SHARD), "stays"),
    ("HTTP 404", Rule("status:404", path=SHARD), None, P),
    ("HTTP 403", Rule("status:403", path=SHARD), Rule("status:403", "PUT", SHARD), P),
    ("corrupt byte (hash mismatch)", Rule("corrupt", path=SHARD), None, P),
]


def _fresh(rule: Rule | None) -> list[Rule]:
    return [] if rule is None else [Rule(rule.fault, rule.method, rule.path, rule.times, rule.every)]


def _short(text: str, root: str) -> str:
    text = text.replace(root, "").replace("|", "/")
    text = re.sub(r"http://127\.0\.0\.1:\d+", "URL", text)
    text = re.sub(r"digits-16px-[0-9a-f]+-train-", "", text)
    text = re.sub(r"[0-9a-f]{64}", "…", text)
    return text if len(text) <= 150 else text[:147] + "..."


def _samples(location: Any) -> list[tuple[str, bytes]]:
    from synthkit.shards import iter_samples

    return [(s["__key__"], s["image"].tobytes()) for s in iter_samples(location)]


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "final" / "encoder.safetensors"))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _train(source: str, run: Path, policy: dict[str, float], epochs: int = 1, **extra: Any) -> None:
    from synthkit.config import load_pipeline
    from synthkit.training.loop import train

    overrides = [
        f'--mix.sources=["real={source}:1"]',
        "--hsg.enabled=false",
        "--train.knn_every=0",
        f"--train.epochs={epochs}",
        *[f"--remote.{k}={v}" for k, v in policy.items()],
        *[f"--{k}={v}" for k, v in extra.items()],
    ]
    train(load_pipeline(ROOT / "pipelines" / "tiny.yaml", overrides), run, progress=False)


def _cell(fn: Any, server: FaultServer | None, root: str, method: str = "GET") -> tuple[str, int, float]:
    from synthkit.errors import SynthkitError

    started = time.monotonic()
    try:
        ok = fn()
        outcome = "ok" if ok else "**differs**"
    except SynthkitError as exc:
        outcome = "error: " + _short(str(exc), root)
    seconds = time.monotonic() - started
    tries = len(server.requests(method, SHARD)) if server is not None else 0
    return outcome, tries, seconds


def fault_table(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import boto3
    import s3fs
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    from synthkit.audit import audit
    from synthkit.config import AuditConfig, DataConfig
    from synthkit.data.convert import convert_source
    from synthkit.shards import location as loc
    from synthkit.shards import verify_shard_set

    policy = _policy_flags(args)
    loc.configure(loc.RemotePolicy(**policy))
    www = tmp / "www"
    data = DataConfig(name="digits", size=16, subset=256)
    convert_source(data, "train", www / "set", maxcount=32)
    local = str(www / "set")
    want = _samples(local)
    _train(local, tmp / "run-local", policy)
    want_weights = _weights(tmp / "run-local")
    audit_cfg = AuditConfig(extractor="pixels")
    want_metrics = audit(local, "digits", tmp / "audit-local", config=audit_cfg)["metrics"]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    upstream = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket="faults")
    want_manifest = convert_source(data, "train", tmp / "export-local", maxcount=32)

    rows = []
    try:
        for i, (label, read_rule, put_rule, kind) in enumerate(FAULTS):
            row: dict[str, Any] = {"fault": label, "kind": kind}
            print(f"[{i + 1}/{len(FAULTS)}] {label}", file=sys.stderr, flush=True)
            with FaultServer(www, _fresh(read_rule), trickle_bps=200) as server:
                url = f"{server.url}/set"

                def verify(url: str = url) -> bool:
                    report = verify_shard_set(url)
                    if not report.ok:
                        from synthkit.errors import ShardError

                        raise ShardError("; ".join(report.problems))
                    return _samples(url) == want  # after verify: the fault is spent or stays

                row["verify"] = _cell(verify, server, str(tmp))
            with FaultServer(www, _fresh(read_rule), trickle_bps=200) as server:
                run = tmp / f"run-{i}"

                def train_cell(url: str = f"{server.url}/set", run: Path = run) -> bool:
                    _train(url, run, policy)
                    return _same(_weights(run), want_weights)

                row["train"] = _cell(train_cell, server, str(tmp))
            with FaultServer(www, _fresh(read_rule), trickle_bps=200) as server:

                def audit_cell(url: str = f"{server.url}/set", i: int = i) -> bool:
                    return (
                        audit(url, "digits", tmp / f"audit-{i}", config=audit_cfg)["metrics"] == want_metrics
                    )

                row["audit"] = _cell(audit_cell, server, str(tmp))
            if put_rule is None and read_rule is not None:
                row["export"] = ("n/a (a download fault)", 0, 0.0)
            else:
                with FaultServer(upstream=upstream, rules=_fresh(put_rule)) as proxy:
                    os.environ["AWS_ENDPOINT_URL"] = proxy.url
                    s3fs.S3FileSystem.clear_instance_cache()
                    dest = f"s3://faults/set-{i}"

                    def export_cell(dest: str = dest) -> bool:
                        manifest = convert_source(data, "train", dest, maxcount=32)
                        return manifest["shards"] == want_manifest["shards"] and verify_shard_set(dest).ok

                    row["export"] = _cell(export_cell, proxy, str(tmp), method="PUT")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        moto.stop()
    return rows


def every_tenth(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A longer streamed run through a server dropping every tenth request, against the local run."""
    from synthkit.config import DataConfig
    from synthkit.data.convert import convert_source

    policy = _policy_flags(args)
    www = tmp / "www10"
    convert_source(DataConfig(name="digits", size=16, subset=1024), "train", www / "set", maxcount=32)
    out: dict[str, Any] = {"images": 1024, "shards": 32, "epochs": args.epochs}
    for workers in (0, 2):
        extra = {"mix.num_workers": workers}
        t = time.monotonic()
        _train(str(www / "set"), tmp / f"ten-local-{workers}", policy, epochs=args.epochs, **extra)
        local_s = time.monotonic() - t
        with FaultServer(www, [Rule("drop", every=10)]) as server:
            t = time.monotonic()
            _train(f"{server.url}/set", tmp / f"ten-remote-{workers}", policy, epochs=args.epochs, **extra)
            remote_s = time.monotonic() - t
            requests, drops = len(server.log), sum(r[3] == "drop" for r in server.log)
        same = _same(_weights(tmp / f"ten-local-{workers}"), _weights(tmp / f"ten-remote-{workers}"))
        out[f"workers={workers}"] = {
            "local_s": round(local_s, 1),
            "remote_s": round(remote_s, 1),
            "requests": requests,
            "dropped": drops,
            "weights_equal": same,
        }
        print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def markdown(rows: list[dict[str, Any]], tenth: dict[str, Any], args: argparse.Namespace, load: str) -> str:
    consumers = ("verify", "train", "audit", "export")
    lines = [
        "# Remote storage faults x consumers",
        "",
        "Generated by `python eval/remote_faults.py` (see its docstring). Each fault hits the second of 8",
        "shards (for `export`: the PUT of the second shard, through a proxy in front of moto's S3 server).",
        f"Retry settings: attempts {args.attempts}, read timeout {args.read_timeout:g} s, connect timeout",
        "2 s, at least 4096 B/s over the read timeout, backoff 0.25 s doubling to 2 s. A cell: what",
        "happened; `ok` means the result equals the fault-free one (verify: the same verified samples;",
        "train: the same final weights; audit: the same metrics; export: the same uploaded shards, and the",
        "set verifies).",
        "Then the requests that reached the faulted file (`tries`; the `none` row shows how many a",
        "fault-free run makes: verify reads the set twice here, verify and then the samples; audit reads a",
        "shard twice)",
        "and the consumer's time in seconds, its own work included (compare with the `none` row).",
        f"Machine: {load}.",
        "",
        "| fault | kind | " + " | ".join(consumers) + " |",
        "|---|---|" + "---|" * len(consumers),
    ]
    for row in rows:
        cells = []
        for c in consumers:
            outcome, tries, seconds = row[c]
            cells.append(
                outcome if outcome.startswith("n/a") else f"{outcome}; {tries} tries; {seconds:.1f} s"
            )
        lines.append(f"| {row['fault']} | {row['kind']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training through a server that drops every tenth request",
        "",
        f"{tenth['images']} digits at 16 px in {tenth['shards']} shards, plain CL (`pipelines/tiny.yaml`,",
        f"`--hsg.enabled=false`), {tenth['epochs']} epochs, streamed through the fault server (every tenth",
        "request of the server reset mid-body), against the same run from the local directory.",
        "",
        "| DataLoader workers | local s | remote s | requests | dropped | final weights equal |",
        "|---|---|---|---|---|---|",
    ]
    for workers in (0, 2):
        r = tenth[f"workers={workers}"]
        lines.append(
            f"| {workers} | {r['local_s']} | {r['remote_s']} | {r['requests']} | {r['dropped']} | "
            f"{'yes' if r['weights_equal'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "remote_faults.md")
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--read-timeout", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--render", type=Path, help=argparse.SUPPRESS)  # a log of an earlier run: rows again
    args = ap.parse_args()
    if args.render is not None:
        lines = [json.loads(x) for x in args.render.read_text().splitlines() if x.startswith("{")]
        rows, tenth = [r for r in lines if "fault" in r], [r for r in lines if "workers=2" in r][-1]
        args.out.write_text(markdown(rows, tenth, args, args.render.with_suffix(".load").read_text().strip()))
        return
    load = "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    with tempfile.TemporaryDirectory(prefix="remote_faults_") as tmp:
        rows = fault_table(args, Path(tmp))
        tenth = every_tenth(args, Path(tmp))
    load += " at the start; " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at the end"
    text = markdown(rows, tenth, args, load)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

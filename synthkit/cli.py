"""The ``synthkit`` command line: a thin layer over the Python API.

    synthkit quickstart [--out DIR]
    synthkit train PIPELINE.yaml [--out RUN_DIR] [--resume] [--section.key=value ...]
    synthkit train PIPELINE.yaml --data real=DIR:0.7 --data syn=DIR:0.3 --hsg.enabled=false
    synthkit generate --run RUN_DIR --n N --seed S --out DIR [--kind hard|pair|all] [--part I/N]
    synthkit eval --run RUN_DIR [--data NAME] [--json]
    synthkit shards verify DIR
    synthkit shards publish DIR
    synthkit shards convert --data NAME [--pipeline PIPELINE.yaml] [--split train] --out DIR
    synthkit shards inspect DIR [--grid PATH] [--real NAME] [--json]
    synthkit shards index DIR
    synthkit config PIPELINE.yaml [--section.key=value ...]
    synthkit audit SHARDS --real REAL --out DIR [--extractor KIND] [--encoder RUN_DIR] [--classifier DIR]
        [--reference auto|split|none] [--fail-on warn|fail]
    synthkit audit train-extractor --data NAME --out DIR

Multi-process: ``accelerate launch --num_processes 2 -m synthkit.cli train PIPELINE.yaml ...`` (and
``generate``: every process writes its part of the set, the main process publishes it).

Conventions: results go to stdout (``--json`` makes them one JSON document, for every command that reports
something); log lines (epoch summaries, warnings) go to stderr through ``logging`` (``synthkit/logs.py``);
progress bars are drawn only on a terminal. Every user error is one line on stderr and exit status 2,
argparse's usage errors included (:class:`Parser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from synthkit import __version__
from synthkit.atomic import check_output_dir, check_output_file
from synthkit.config import AuditConfig, DataConfig, GenerateConfig, dump_yaml, load_pipeline, to_dict
from synthkit.errors import ConfigError, SynthkitError
from synthkit.logs import configure, show_progress
from synthkit.registry import EXTRACTORS, SOURCES

EXIT_USAGE = 2
NO_PROGRESS = "no progress bars (they are drawn only on a terminal anyway); log lines stay"
JSON = "print the result as one JSON document on stdout"

logger = logging.getLogger("synthkit.cli")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and exit 2 like every other synthkit error.

    argparse prints the whole usage and then the message; a batch log wants the one line that says what is
    wrong, and ``--help`` says the rest.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class ConfigHelp(argparse.Action):
    """``-h/--help`` that appends the config reference (``synthkit/cli_help.py``), built only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from synthkit.cli_help import config_reference

        parser.epilog = config_reference()
        parser.print_help()
        parser.exit()


def _progress(args: argparse.Namespace) -> bool:
    return show_progress(not getattr(args, "no_progress", False))


def _tables_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    t = manifest.get("metadata_tables")
    return {"dir": t["dir"], "format": t["format"], "count": len(t["tables"])} if t else None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _overrides(extra: list[str]) -> list[str]:
    bad = [x for x in extra if not (x.startswith("--") and "=" in x and "." in x.split("=", 1)[0])]
    if bad:
        raise ConfigError(f"unrecognised arguments {' '.join(bad)} (overrides look like --section.key=value)")
    return extra


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.data.sources import check_source
    from synthkit.training.loop import train

    overrides = _overrides(extra)
    if args.data:  # sugar for --mix.sources=[...]
        overrides.append(f"--mix.sources={json.dumps(args.data)}")
    cfg = load_pipeline(args.pipeline, overrides)
    if not cfg.mix.sources or cfg.train.knn_every:  # the real data it reads, checked before the run dir
        check_source(cfg.data, test=bool(cfg.train.knn_every))
    out = Path(args.out) if args.out else Path("runs") / Path(args.pipeline).stem
    result = train(cfg, out, resume=args.resume, progress=_progress(args))
    if args.json:
        _print_json({"run_dir": str(out), "already_finished": result.already_finished, **result.summary})
    elif result.already_finished:
        print(
            f"{out} already finished its train.epochs={cfg.train.epochs}; nothing to do (to train it "
            "further, resume it with a larger --train.epochs)"
        )
    elif result.summary:
        last = result.summary.get("last_epoch", {})
        knn = f", kNN {last['knn_acc']:.4f}" if "knn_acc" in last else ""
        pre = cfg.generator.steps_before_epochs if cfg.producer_active else 0
        gan = f" after {pre} GAN pre-training steps" if pre else ""
        done = f"{result.summary['epochs']} epochs ({result.summary['steps']} steps)"
        print(f"trained {done}{gan}{knn}; run: {out}")
    return 0


def _cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    _no_extra(extra)
    asked = GenerateConfig(  # the flags, checked before the run is read
        n=args.n, seed=args.seed, name=args.name, maxcount=args.maxcount, kind=args.kind, part=args.part
    )
    from synthkit.export import generate

    res = generate(args.run, args.out, **dataclasses.asdict(asked), progress=_progress(args))
    m = res.manifest
    if not res.main:  # another process of a launch: the main process reports
        return 0
    if res.part is not None:
        part, first, n_shards = res.part["part"], res.part["part"]["first_shard"], res.part["part"]["shards"]
        if args.json:
            _print_json({"out": str(args.out), "part": part, "total": res.part["total"], "shards": n_shards})
            return 0
        where = {0: "no shards: the set has fewer shards than parts", 1: f"shard {first}"}.get(
            n_shards, f"shards {first}-{first + n_shards - 1}"
        )
        print(
            f"wrote part {part['index']}/{part['count']} of the set ({res.part['total']} samples, {where}) "
            f"to {args.out}; once every part is written: synthkit shards publish {args.out}"
        )
        return 0
    if args.json:
        h = res.hardness
        _print_json(
            {
                "out": str(args.out),
                "name": m.get("name"),
                "total": m["total"],
                "shards": len(m["shards"]),
                "reused": res.reused,
                "resumed_from": res.resumed_from,
                "hardness": {"mean": float(h.mean()), "min": float(h.min()), "max": float(h.max())}
                if len(h)
                else None,
                "metadata_tables": _tables_summary(m),
            }
        )
        return 0
    if res.reused:
        print(f"{args.out} already holds this exact shard set ({m['total']} samples); nothing to do")
        return 0
    if res.resumed_from:
        print(f"resumed an interrupted export: {res.resumed_from} samples were already on disk")
    h = res.hardness
    print(
        f"wrote {m['total']} samples in {len(m['shards'])} shards to {args.out} (set {m['name']}); "
        f"hardness mean {h.mean():.4f} (min {h.min():.4f}, max {h.max():.4f})"
    )
    return 0


def _cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.evaluate import evaluate

    _no_extra(extra)
    res = evaluate(
        args.run,
        args.data,
        root=args.root,
        full_train=args.full_train,
        device=args.device,
        knn_k=args.knn_k,
    )
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"{res['data']}: kNN accuracy {res['knn_accuracy']:.4f} (k={res['knn_k']}), "
            f"linear accuracy {res['linear_accuracy']:.4f} "
            f"(train {res['train_images']}, test {res['test_images']})"
        )
    return 0


def _cmd_quickstart(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.quickstart import quickstart

    summary = quickstart(args.out, overrides=_overrides(extra), progress=_progress(args))
    if args.json:
        _print_json({k: v for k, v in summary.items() if k != "text"})
    else:
        print(summary["text"])
    return 0


def _cmd_shards_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.shards import verify_shard_set
    from synthkit.shards.format import printable

    _no_extra(extra)
    report = verify_shard_set(args.dir)
    if args.json:
        _print_json(
            {
                "dir": str(args.dir),
                "ok": report.ok,
                "total": report.total,
                "shards": report.shards,
                "problems": list(report.problems),
            }
        )
        return 0 if report.ok else 1
    if report.ok:
        print(f"{args.dir}: OK ({report.total} samples in {report.shards} shards)")
        return 0
    print(f"{args.dir}: {len(report.problems)} problem(s)", file=sys.stderr)
    for p in report.problems:
        print(f"  - {printable(p)}", file=sys.stderr)  # problems quote text from the set
    return 1


def _cmd_shards_publish(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.export import publish

    _no_extra(extra)
    res = publish(args.dir)
    m = res.manifest
    if args.json:
        _print_json(
            {
                "dir": str(args.dir),
                "name": m.get("name"),
                "total": m["total"],
                "shards": len(m["shards"]),
                "reused": res.reused,
                "metadata_tables": _tables_summary(m),
            }
        )
        return 0
    if res.reused:
        print(f"{args.dir} is published already ({m['total']} samples in {len(m['shards'])} shards)")
    else:
        print(f"{args.dir}: verified and published {m['total']} samples in {len(m['shards'])} shards")
    return 0


def _part(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    try:
        if slash:
            return int(index), int(count)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected I/N (part I of N, from 0), got {text!r}")


def _cmd_shards_convert(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.data.convert import convert_source, default_dir, default_name
    from synthkit.data.sources import check_source
    from synthkit.shards.format import is_safe_name
    from synthkit.shards.location import is_url

    _no_extra(extra)
    if args.maxcount < 1:
        raise ConfigError(f"--maxcount must be >= 1, got {args.maxcount}")
    if args.name is not None and not is_safe_name(args.name):
        raise ConfigError(f"--name {args.name!r} must be letters, digits, '_', '-' or '.', not hidden")
    data_cfg = _convert_data(args)
    if data_cfg.name == "folder":
        check_source(data_cfg, test=args.split == "test")
    name = args.name or default_name(data_cfg, args.split)
    # a URL stays text (Path would turn "s3://" into "s3:/")
    out = args.out or str(Path("shards") / default_dir(data_cfg, args.split))
    if not is_url(out):
        out = check_output_dir(out)
    m = convert_source(data_cfg, args.split, out, name=name, maxcount=args.maxcount, progress=_progress(args))
    if args.json:
        _print_json(
            {
                "out": str(out),
                "name": m["name"],
                "total": m["total"],
                "shards": len(m["shards"]),
                "classes": m["classes"],
                "metadata_tables": m.get("metadata_tables"),
            }
        )
        return 0
    labels = "with true labels as cls" if m["classes"] is not None else "unlabelled"
    print(
        f"wrote {m['total']} {data_cfg.name} {args.split} images in {len(m['shards'])} shards to {out} "
        f"(set {m['name']}, {data_cfg.size}x{data_cfg.size} px, {labels}); train with --data.size="
        f"{data_cfg.size} to mix it"
    )
    return 0


def _convert_data(args: argparse.Namespace) -> DataConfig:
    """The data section ``shards convert`` reads: ``--pipeline``'s with the flags over it, else the flags'
    (with the size synthkit's pipelines train the source at)."""
    from synthkit.data.convert import TRAINING_SIZES

    if args.pipeline is not None:
        return _pipeline_data(args)
    if args.data is None:
        raise ConfigError("shards convert needs --data NAME (or --pipeline PIPELINE.yaml)")
    return DataConfig(
        name=args.data,
        root=args.root,
        size=args.size if args.size is not None else TRAINING_SIZES.get(args.data, DataConfig.size),
        channels=args.channels,
        subset=args.subset,
        subset_seed=args.subset_seed or 0,
    )


def _pipeline_data(args: argparse.Namespace) -> DataConfig:
    """The data section of the run the set is meant for (``--pipeline``), the flags given over it."""
    data = load_pipeline(args.pipeline, []).data
    if args.data is not None and args.data != data.name:
        raise ConfigError(f"--data {args.data} differs from {args.pipeline}'s data.name {data.name}")
    flags = ("root", "size", "channels", "subset", "subset_seed")
    given = {key: getattr(args, key) for key in flags if getattr(args, key) is not None}
    return dataclasses.replace(data, **given)


def _cmd_shards_index(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.shards.index import write_wids_index

    _no_extra(extra)
    path = write_wids_index(args.dir, name=args.name)
    index = json.loads(path.read_text(encoding="utf-8"))
    if args.json:
        _print_json(
            {
                "index": str(path),
                "name": index["name"],
                "shards": len(index["shardlist"]),
                "samples": sum(s["nsamples"] for s in index["shardlist"]),
            }
        )
    else:
        print(
            f"wrote {path} (wids index {index['name']!r}: {len(index['shardlist'])} shards, "
            f"{sum(s['nsamples'] for s in index['shardlist'])} samples); read it with "
            f"wids.ShardListDataset({str(path)!r})"
        )
    return 0


def _cmd_shards_inspect(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.data.inspect import format_summary, inspect_shard_set

    _no_extra(extra)
    if args.per_row < 1:
        raise ConfigError(f"--per-row must be >= 1, got {args.per_row}")
    if args.grid is not None:
        check_output_file(args.grid, "--grid")
    real = None if args.real == "none" else args.real
    summary = inspect_shard_set(args.dir, grid=args.grid, per_row=args.per_row, real=real, root=args.root)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    cfg = load_pipeline(args.pipeline, _overrides(extra))
    if args.json:
        _print_json(to_dict(cfg))
    else:
        print(dump_yaml(cfg), end="")
    return 0


def _cmd_audit(args: argparse.Namespace, extra: list[str]) -> int:
    _no_extra(extra)
    cfg = AuditConfig(  # the flags, checked before the audit's modules load
        extractor=args.extractor or "auto",
        real_split=args.split,
        k=args.k,
        max_samples=args.max_samples,
        max_real=args.max_real,
        seed=args.seed,
        device=args.device,
        exact_max=args.exact_max,
        prdc_sample=args.prdc_sample,
        reference=args.reference,
    )
    from synthkit.audit import audit
    from synthkit.audit_verdict import failing, verdict_lines

    report = audit(
        args.shards,
        args.real,
        args.out,
        config=cfg,
        encoder_run=args.encoder,
        classifier=args.classifier,
        inception_weights=args.inception_weights,
        real_root=args.root,
        progress=_progress(args),
    )
    verdict = report["verdict"]
    if args.json:
        print(json.dumps({"verdict": verdict, "metrics": report["metrics"]}, indent=2))
    else:
        print("\n".join(verdict_lines(verdict)))
        e = report["extractor"]
        print(
            f"extractor {e['id']} ({e['chosen_by']}); {report['shards']['audited']} samples vs "
            f"{report['real']['count']} real, on {report['methods']['features']['device']}"
        )
        print(f"  {'metric':<24} {'value':>10}  {'real vs real':>12}")
        for name, m in report["metrics"].items():
            value = f"{m['value']:.4g}" if isinstance(m["value"], float) else str(m["value"])
            ref = m.get("reference")
            ref_text = "" if ref is None else (f"{ref:.4g}" if isinstance(ref, float) else str(ref))
            if "fraction" in m:  # a count: its share, and the reference's share
                value = f"{m['value']} ({100 * m['fraction']:.1f} %)"
                ref_text = "" if ref is None else f"{100 * ref:.1f} %"
            print(
                f"  {name:<24} {value:>10}  {ref_text:>12}"
                + ("  (estimated: see report.json methods)" if m.get("estimated") else "")
            )
        print(f"report: {Path(args.out) / 'report.html'}")
    if args.fail_on is not None:
        bad = failing(verdict, args.fail_on)
        if bad:
            names = ", ".join(f"{g['name']} ({g['status']})" for g in bad)
            print(f"synthkit audit: --fail-on {args.fail_on}: {names}", file=sys.stderr)
            return 1
    return 0


def _cmd_audit_train_extractor(args: argparse.Namespace, extra: list[str]) -> int:
    from synthkit.metrics.extractors import train_classifier

    _no_extra(extra)
    data = DataConfig(name=args.data, root=args.root, size=args.size, subset=args.subset)
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1 (0 would save an untrained classifier), got {args.epochs}")
    check_output_dir(args.out)
    meta = train_classifier(data, args.out, epochs=args.epochs, seed=args.seed, progress=_progress(args))
    if args.json:
        _print_json({"out": str(args.out), **meta})
        return 0
    print(
        f"trained a {meta['num_classes']}-class classifier on {meta['train_images']} {args.data} images "
        f"({meta['epochs']} epochs): test accuracy {meta['test_accuracy']:.4f}; "
        f"sha256 {meta['sha256'][:12]}; saved in {args.out}"
    )
    if meta["weak"]:
        print(
            f"warning: a weak classifier (test accuracy {meta['test_accuracy']:.3f}, chance "
            f"{1 / meta['num_classes']:.3f}): audits in its feature space will flag it; train longer "
            "(--epochs) or on more images",
            file=sys.stderr,
        )
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unrecognised arguments: {' '.join(extra)}")


def _train_extractor_parser(prog: str = "synthkit audit train-extractor") -> Parser:
    te = Parser(prog=prog, description="Train the in-domain classifier extractor of `synthkit audit`.")
    te.add_argument("--data", required=True, choices=SOURCES.names(), help="a labeled source")
    te.add_argument("--root", help="data root for --data (default: the source's own)")
    te.add_argument("--size", type=int, default=28, help="image side length (default 28)")
    te.add_argument("--subset", type=int, help="a fixed random subset of N training images")
    te.add_argument(
        "--epochs",
        type=int,
        help="training epochs (default: at least 10, and enough for 500 optimizer steps on small data)",
    )
    te.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    te.add_argument("--out", required=True, help="directory for the weights and extractor.json")
    te.add_argument("--json", action="store_true", help=JSON)
    te.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    te.set_defaults(fn=_cmd_audit_train_extractor, command="audit train-extractor")
    return te


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="synthkit",
        description="Synthetic data that teaches contrastive encoders.",
        epilog="`synthkit COMMAND --help` describes a command; `synthkit train --help` lists every config "
        "key.",
    )
    p.add_argument("--version", action="version", version=f"synthkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="joint HSG + contrastive training (or the plain baseline)",
        usage="%(prog)s PIPELINE [--out RUN_DIR] [--resume] [--no-progress] [--json] "
        "[--data NAME=DIR:WEIGHT ...] [--section.key=value ...]",
        description=textwrap.fill(
            "Train the encoder (and the configured producer) and publish the run's final weights. Config "
            "keys are overridden with --section.key=value; the list below is read off the config "
            "dataclasses.",
            100,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    t.add_argument("-h", "--help", action=ConfigHelp, help="show this help, with every config key, and exit")
    t.add_argument("pipeline", help="pipeline YAML file (see pipelines/)")
    t.add_argument("--out", help="run directory (default runs/PIPELINE_NAME)")
    t.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    t.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    t.add_argument("--json", action="store_true", help=JSON + " (the run's summary)")
    t.add_argument(
        "--data",
        action="append",
        metavar="NAME=DIR:WEIGHT",
        help="train from shard sets mixed in these proportions (repeatable; weights add up to 1; all "
        "sets one image size). With synthetic sets the producer must be off: --hsg.enabled=false (plain "
        "CL on the mix); with only real sets it trains on them, streamed. An epoch is mix.epoch_samples "
        "samples (default: the real sets' total, so as many steps as a real-only run; with no real set, "
        "the largest set's); each epoch logs the samples drawn per set (mix_drawn_NAME)",
    )
    t.set_defaults(fn=_cmd_train)

    g = sub.add_parser("generate", help="export a run's hard samples and/or positive pairs as a shard set")
    g.add_argument("--run", required=True, help="a finished run directory")
    g.add_argument("--out", required=True, help="output directory of the shard set")
    g.add_argument(
        "--n",
        type=int,
        help="samples per kind, for every producer: --kind pair --n 10 writes 5 pairs, --kind all --n 10 "
        "writes 10 hard samples and 5 pairs (default: the run's export.n)",
    )
    g.add_argument(
        "--kind",
        choices=("hard", "pair", "all"),
        help="hard samples, positive pairs (pair_a/pair_b), or both (default: all the run has)",
    )
    g.add_argument(
        "--seed",
        type=int,
        help="sampling seed, 0 <= S < 2**63 (default: the run's export.seed); negative seeds are refused",
    )
    g.add_argument(
        "--name",
        help="set name: shard file prefix and sample-key prefix (default: export.name, else one of this "
        "export's own, STAGE-PRODUCER-DIGEST-train)",
    )
    g.add_argument("--maxcount", type=int, help="samples per shard (default: the run's export.maxcount)")
    g.add_argument(
        "--part",
        type=_part,
        metavar="I/N",
        help="write only part I of N (0 <= I < N) of the set, for jobs started on their own (array jobs); "
        "publish with `synthkit shards publish OUT` once all N are written",
    )
    g.add_argument("--json", action="store_true", help=JSON)
    g.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    g.set_defaults(fn=_cmd_generate)

    e = sub.add_parser("eval", help="kNN and linear-probe accuracy of a run's frozen encoder")
    e.add_argument("--run", required=True, help="a finished run directory (its final/ encoder is evaluated)")
    e.add_argument("--data", choices=SOURCES.names(), help="labeled data set (default: the run's)")
    e.add_argument("--root", help="data root for --data")
    e.add_argument(
        "--full-train", action="store_true", help="fit on the whole train split, not the run's subset"
    )
    e.add_argument("--device", help="where features are extracted and probes fitted (default: cuda if any)")
    e.add_argument(
        "--knn-k", type=int, help="neighbours of the kNN classifier (default: the run's eval.knn_k)"
    )
    e.add_argument("--json", action="store_true", help=JSON)
    e.set_defaults(fn=_cmd_eval)

    q = sub.add_parser(
        "quickstart", help="train HSG on the embedded digits, export, evaluate (a few minutes)"
    )
    q.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    q.add_argument("--json", action="store_true", help=JSON)
    q.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    q.set_defaults(fn=_cmd_quickstart)

    s = sub.add_parser("shards", help="shard set tools: verify, publish, convert, inspect, index")
    ssub = s.add_subparsers(dest="shards_command", required=True, metavar="SUBCOMMAND")
    v = ssub.add_parser("verify", help="check a shard set against its manifest; non-zero exit on problems")
    v.add_argument("dir", help="the shard set directory")
    v.add_argument("--json", action="store_true", help=JSON)
    v.set_defaults(fn=_cmd_shards_verify)
    pb = ssub.add_parser(
        "publish", help="verify the parts of a set written with generate --part and publish it as one set"
    )
    pb.add_argument("dir", help="the directory the parts were written to (generate --out)")
    pb.add_argument("--json", action="store_true", help=JSON)
    pb.set_defaults(fn=_cmd_shards_publish)
    cv = ssub.add_parser(
        "convert", help="write a real data source as a shard set (kind real, true labels as cls)"
    )
    cv.add_argument("--data", choices=SOURCES.names(), help="the source (default: --pipeline's data.name)")
    cv.add_argument(
        "--pipeline",
        help="the pipeline the set is meant to train with: its data section (source, root, size, channels, "
        "subset) is the default of every flag here",
    )
    cv.add_argument("--root", help="data root for --data (required for folder)")
    cv.add_argument("--split", choices=("train", "test"), default="train", help="(default train)")
    cv.add_argument(
        "--size",
        type=int,
        help="side length images are resized to (default: --pipeline's data.size, else the size synthkit's "
        "pipelines train the source at: digits 16, fashion-mnist 28, cifar10/cifar100 32, folder 28)",
    )
    cv.add_argument(
        "--channels", type=int, choices=(1, 3), help="force grayscale or RGB (default: the source's)"
    )
    cv.add_argument("--subset", type=int, help="a fixed random subset of N training images")
    cv.add_argument("--subset-seed", type=int, help="seed of --subset (default 0)")
    cv.add_argument("--out", help="output directory (default shards/DATA-SPLIT)")
    cv.add_argument(
        "--name",
        help="set name: shard file and sample-key prefix (default DATA-SIZEpx-DIGEST-SPLIT, this "
        "conversion's own)",
    )
    cv.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    cv.add_argument("--json", action="store_true", help=JSON)
    cv.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    cv.set_defaults(fn=_cmd_shards_convert)
    ins = ssub.add_parser(
        "inspect", help="counts, hardness and image statistics of a shard set; optional grid"
    )
    ins.add_argument("dir", help="the shard set directory")
    ins.add_argument(
        "--grid",
        help="write a PNG grid here (never inside DIR): a labelled row per condition (else per class), a "
        "panel per kind (pairs a | b side by side), and a row of real images to compare with",
    )
    ins.add_argument("--per-row", type=int, default=10, help="images per grid row (default 10)")
    ins.add_argument(
        "--real",
        default="auto",
        help="the grid's real row: a source name, none, or auto (the default: the source the set's run "
        "trained on, from its default location)",
    )
    ins.add_argument("--root", help="data root of --real NAME")
    ins.add_argument("--json", action="store_true", help="print the summary as JSON")
    ins.set_defaults(fn=_cmd_shards_inspect)
    ix = ssub.add_parser(
        "index", help="write DIR/wids-index.json, for random access with wids.ShardListDataset"
    )
    ix.add_argument("dir", help="a published shard set directory")
    ix.add_argument("--name", help="the dataset name wids reports and caches under (default SETNAME-HASH12)")
    ix.add_argument("--json", action="store_true", help=JSON)
    ix.set_defaults(fn=_cmd_shards_index)

    a = sub.add_parser(
        "audit",
        help="sample-quality metrics and an HTML report of a shard set (also: audit train-extractor)",
        epilog="In-domain classifier extractor: synthkit audit train-extractor --data NAME --out DIR",
    )
    a.add_argument("shards", help="the shard set to audit")
    a.add_argument("--real", required=True, help="real data: a shard set directory or a source name")
    a.add_argument("--out", required=True, help="directory for report.json and report.html")
    a.add_argument(
        "--extractor",
        choices=EXTRACTORS.names(),
        help="feature space (default: the kind of --encoder, --classifier or --inception-weights; else the "
        "encoder of the run that made the set, when it is on this machine; else pixels). The report "
        "names the one used and why",
    )
    a.add_argument("--encoder", help="a finished run: encoder features, and hardness under its encoder")
    a.add_argument("--classifier", help="a classifier directory from `synthkit audit train-extractor`")
    a.add_argument("--inception-weights", help="local torchvision inception_v3 weights (never downloaded)")
    a.add_argument("--root", help="data root of a named --real source")
    a.add_argument("--split", choices=("train", "test"), default="train", help="real split (default train)")
    a.add_argument("--k", type=int, default=5, help="k of the PRDC manifolds (default 5)")
    a.add_argument("--max-samples", type=int, help="audit only the first N samples of the set")
    a.add_argument("--max-real", type=int, help="a seeded random subset of N real images")
    a.add_argument("--seed", type=int, default=0, help="seed of the subsets and KID's draws (default 0)")
    a.add_argument(
        "--device", help="where features and distances are computed: cpu, cuda, cuda:N (default: cuda if any)"
    )
    a.add_argument(
        "--exact-max",
        type=int,
        default=50_000,
        help="PRDC and memorisation are exact up to this many images per set; above it PRDC runs on seeded "
        "samples and memorisation on an IVF index, with the method and its measured error in the report "
        "(default 50,000)",
    )
    a.add_argument(
        "--prdc-sample",
        type=int,
        default=10_000,
        help="points per set of PRDC above --exact-max (default 10,000)",
    )
    a.add_argument(
        "--reference",
        choices=("auto", "split", "none"),
        default="auto",
        help="the real-vs-real reference every figure is read against: auto (a named source's other split, "
        "else a disjoint part of the real shard set), split (always the latter), none (gates that need it "
        "are skipped) (default auto)",
    )
    a.add_argument(
        "--fail-on",
        choices=("warn", "fail"),
        help="exit 1 when a gate is at or above this level (the report is written first)",
    )
    a.add_argument("--json", action="store_true", help="print the verdict and the metrics as JSON")
    a.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    a.set_defaults(fn=_cmd_audit)

    c = sub.add_parser(
        "config",
        help="print the resolved config of a pipeline with overrides",
        usage="%(prog)s [PIPELINE] [--json] [--section.key=value ...]",
        description=textwrap.fill(
            "Print the resolved config (YAML, or JSON with --json). Config keys are overridden with "
            "--section.key=value; the list below is read off the config dataclasses.",
            100,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    c.add_argument("-h", "--help", action=ConfigHelp, help="show this help, with every config key, and exit")
    c.add_argument("pipeline", nargs="?", help="pipeline YAML (default: the built-in quickstart defaults)")
    c.add_argument("--json", action="store_true", help=JSON)
    c.set_defaults(fn=_cmd_config)
    return p


def _command(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:2]
    if words[:1] == ["shards"] or words[:2] == ["audit", "train-extractor"]:
        return " ".join(words)
    return words[0] if words else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure()
    command = _command(argv)
    try:
        try:
            if argv[:2] == ["audit", "train-extractor"]:  # a sub-subcommand next to audit's SHARDS
                args, extra = _train_extractor_parser().parse_known_args(argv[2:])
            else:
                args, extra = build_parser().parse_known_args(argv)
        except SystemExit as e:  # a usage error (one line, printed by Parser.error); --help exits 0
            if e.code == EXIT_USAGE:
                return EXIT_USAGE
            raise
        command = getattr(args, "command", command)
        if getattr(args, "shards_command", None):
            command = f"shards {args.shards_command}"
        return args.fn(args, extra)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - turn known user errors into one clear line
        if getattr(e, "quiet", False):  # another process of the launch failed and printed the error
            return EXIT_USAGE
        if _is_user_error(e):
            message = " ".join(str(e).split())  # one line, whatever the message held
            print(f"synthkit{' ' + command if command else ''}: error: {message}", file=sys.stderr)
            return EXIT_USAGE
        raise


def _is_user_error(e: Exception) -> bool:
    return isinstance(e, SynthkitError)


if __name__ == "__main__":
    sys.exit(main())

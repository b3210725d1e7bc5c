"""The ``defectscope`` command: a thin layer over the Python API.

Option precedence, lowest to highest: built-in defaults < ``--config FILE`` < command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from defectscope.errors import ConfigError, DefectscopeError

MODEL_OPTIONS = {
    # option dest: (flag, type, help)
    "backbone": (
        "--backbone",
        str,
        "backbone name (default efficientnet_lite0; also resnet18, "
        "wide_resnet50_2, timm:ARCH, torchvision:ARCH)",
    ),
    "layers": ("--layers", str, "feature layers (module names); default: stride-4/8/16 stages"),
    "weights": ("--weights", str, "backbone weights file (.pth/.safetensors), or 'random'"),
    "n_features": ("--n-features", int, "channels kept at random (default per backbone; 0: all)"),
    "image_size": ("--image-size", int, "square input size in pixels (default 256)"),
    "seed": ("--seed", int, "seed of the channel subset and the held-out slice (default 0)"),
    "runtime": ("--runtime", str, "auto | torch | onnxruntime (default auto)"),
    "batch_size": ("--batch-size", int, "images per forward pass (default 32)"),
    "num_workers": ("--workers", int, "image decoding threads (default 2)"),
    "threshold_quantile": (
        "--threshold-quantile",
        float,
        "quantile of held-out good scores used as threshold (default 0.99)",
    ),
}

EXAMPLES = {
    "fit": "defectscope fit --data ../shared/datasets/tire\n"
    "  defectscope fit --data mvtec/bottle --backbone resnet18 --weights resnet18.pth",
    "evaluate": "defectscope evaluate --model runs/fit/tire/model.safetensors "
    "--data ../shared/datasets/tire",
    "predict": "defectscope predict --model runs/fit/tire images/ part_017.png",
    "benchmark": "defectscope benchmark --data ../shared/datasets\n"
    "  defectscope benchmark --data mvtec --categories bottle screw --runtime torch",
    "demo": "defectscope demo",
}


def _load_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    text = file.read_text()
    try:
        if file.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"config file {file} is not valid {file.suffix[1:]}: {exc}") from exc
    unknown = sorted(set(data) - set(MODEL_OPTIONS))
    if unknown:
        from defectscope.errors import unknown_name

        raise ConfigError(f"config file {file}: " + unknown_name("key", unknown[0], MODEL_OPTIONS))
    return data


def model_params(args: argparse.Namespace) -> dict[str, Any]:
    """Detector arguments: defaults < config file < command line."""
    params = _load_config(getattr(args, "config", None))
    for dest in MODEL_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            params[dest] = value
    params["progress"] = not args.quiet
    return params


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model options (defaults < --config < these)")
    group.add_argument("--config", help="JSON or TOML file with model options")
    for dest, (flag, kind, text) in MODEL_OPTIONS.items():
        nargs = "+" if dest == "layers" else None
        group.add_argument(flag, dest=dest, type=kind, nargs=nargs, default=None, help=text)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default="runs", help="folder of run folders (default runs)")
    parser.add_argument("--name", help="run folder name (numbered if taken)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectscope",
        description="Visual anomaly detection and localisation (PaDiM) on MVTec-layout data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
    )
    from defectscope import __version__

    parser.add_argument("--version", action="version", version=f"defectscope {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=text,
            description=text,
            epilog="example:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(sub)
        return sub

    fit = verb("fit", "fit a detector on one category's train/good images and save it")
    fit.add_argument("--data", required=True, help="category folder (MVTec layout)")
    fit.add_argument("--model", default="padim", help="detector (default padim)")
    _add_model_options(fit)

    ev = verb("evaluate", "evaluate a saved model on a category's test split")
    ev.add_argument("--model", required=True, help="model file or run folder")
    ev.add_argument("--data", required=True, help="category folder with test/ (and ground_truth/)")
    ev.add_argument("--runtime", default=None, help="auto | torch | onnxruntime")

    pr = verb("predict", "score images or folders: pass/fail, heatmaps, CSV/JSON")
    pr.add_argument("--model", required=True, help="model file or run folder")
    pr.add_argument("inputs", nargs="+", help="image files or folders of images")
    pr.add_argument("--runtime", default=None, help="auto | torch | onnxruntime")
    pr.add_argument("--no-images", action="store_true", help="do not write heatmap overlays")

    bench = verb("benchmark", "fit and evaluate every category under a root; table + rankings")
    bench.add_argument("--data", required=True, help="MVTec root or one category folder")
    bench.add_argument("--categories", nargs="+", help="only these categories")
    bench.add_argument(
        "--model",
        nargs="+",
        default=["padim"],
        dest="models",
        help="detectors to compare (default padim)",
    )
    _add_model_options(bench)

    demo = verb("demo", "generate a synthetic data set and run fit + benchmark on it, offline")
    demo.add_argument("--size", type=int, default=128, help="synthetic image size (default 128)")
    _add_model_options(demo)

    rep = verbs.add_parser("report", help="rebuild report.html of a saved run folder")
    rep.add_argument("run_dir", help="a run folder written by evaluate or benchmark")
    rep.add_argument("-q", "--quiet", action="store_true")
    return parser


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def cmd_fit(args: argparse.Namespace) -> int:
    from defectscope.api import make_detector
    from defectscope.data import load_category
    from defectscope.runs import next_run_dir

    category = load_category(args.data)
    for notice in category.notices:
        _say(args, f"notice: {notice}")
    detector = make_detector(args.model, model_params(args))
    start = time.perf_counter()
    detector.fit(category)
    seconds = time.perf_counter() - start
    run = next_run_dir(Path(args.project) / "fit", args.name or category.name)
    path = detector.save(run / "model.safetensors")
    (run / "config.json").write_text(
        json.dumps(
            {
                "command": args.command,
                "detector": detector.name,
                "params": detector.get_params(),
                "fitted": detector.fitted_info(),
            },
            indent=2,
        )
    )
    print(
        f"fitted {detector.name} on {len(category.train_paths)} images of {category.name} "
        f"in {seconds:.1f} s; threshold {detector.threshold_:.4g}; saved {path}"
    )
    return 0


def _load_model(args: argparse.Namespace):
    import defectscope

    overrides: dict[str, Any] = {"progress": not args.quiet}
    if args.runtime:
        overrides["runtime"] = args.runtime
    return defectscope.load(args.model, **overrides)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from defectscope.api import write_run
    from defectscope.data import load_category
    from defectscope.evaluation import evaluate
    from defectscope.runs import next_run_dir

    detector = _load_model(args)
    category = load_category(args.data, require_test=True)
    result = evaluate(detector, category)
    run = next_run_dir(Path(args.project) / "evaluate", args.name or category.name)
    write_run([result], run, {"command": args.command, "params": detector.get_params()})
    _print_results([result], run, args)
    return 0


def _print_results(results, run: Path, args: argparse.Namespace) -> None:
    from defectscope.report.table import markdown_rankings, markdown_table, rankings, result_rows

    for notice in dict.fromkeys(n for r in results for n in r.notices):
        _say(args, f"notice: {notice}")
    print(markdown_table(result_rows(results)))
    if len(results) > 1:
        print()
        print(markdown_rankings(rankings(results)))
    print(f"results written to {run}")


def cmd_predict(args: argparse.Namespace) -> int:
    from defectscope.api import predict_to_folder
    from defectscope.runs import next_run_dir

    detector = _load_model(args)
    run = next_run_dir(Path(args.project) / "predict", args.name or "predict")
    predictions, notices = predict_to_folder(detector, args.inputs, run, images=not args.no_images)
    for notice in notices:
        _say(args, f"notice: {notice}")
    flagged = sum(p.is_anomalous for p in predictions)
    for p in predictions:
        verdict = "FAIL" if p.is_anomalous else "pass"
        print(f"{verdict}  {p.score:10.4g}  {p.path}")
    print(
        f"{flagged} of {len(predictions)} images flagged anomalous "
        f"(threshold {detector.threshold_:.4g}); results in {run}"
    )
    return 0


def _run_benchmark(
    args: argparse.Namespace,
    data: str | Path,
    models: list[str],
    run: Path,
    categories: list[str] | None = None,
) -> int:
    """Benchmark, print the table; exit code 1 when any category or model failed."""
    from defectscope.api import benchmark

    outcome = benchmark(
        data,
        models,
        model_params(args),
        run,
        categories=categories,
        command=args.command,
        log=lambda s: _say(args, s),
    )
    _print_results(outcome.results, run, args)
    for failure in outcome.failures:
        print(f"defectscope {args.verb}: error: skipped {failure}", file=sys.stderr)
    return 1 if outcome.failures else 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from defectscope.runs import next_run_dir

    run = next_run_dir(Path(args.project) / "benchmark", args.name or "benchmark")
    return _run_benchmark(args, args.data, args.models, run, args.categories)


def cmd_demo(args: argparse.Namespace) -> int:
    from defectscope.data.synthetic import make_dataset
    from defectscope.runs import next_run_dir

    run = next_run_dir(Path(args.project) / "demo", args.name or "demo")
    data = run / "data"
    _say(args, f"writing a synthetic MVTec-layout data set to {data}")
    make_dataset(data, size=args.size)
    return _run_benchmark(args, data, ["padim"], run)


def cmd_report(args: argparse.Namespace) -> int:
    from defectscope.report.html import rebuild_report

    path = rebuild_report(Path(args.run_dir))
    print(f"report written to {path}")
    return 0


COMMANDS = {
    "fit": cmd_fit,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
    "demo": cmd_demo,
    "report": cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = ["defectscope", *argv]
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.verb](args)
    except DefectscopeError as exc:
        print(f"defectscope {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defectscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

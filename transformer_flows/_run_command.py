"""`transformer-flows run CONFIG --out DIR [--smoke] [key=value ...]`."""

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a config into DIR (dataset + figures); re-running resumes",
        description="Run the experiment of a YAML config into DIR: the labelled dataset "
        "(DIR/dataset.nc, written chunk by chunk under DIR/chunks so an "
        "interrupted run resumes where it stopped) and the config's figures as PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/figure3.yaml")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory; re-use it to resume an interrupted run",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="apply the config's `smoke:` overrides: same pipeline, toy size",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--no-figures", action="store_true", help="write the dataset only")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config values, e.g. sweep.starts=64 solver.method=normalized_euler",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    from ._config import load_config

    config = load_config(args.config, args.overrides, smoke=args.smoke)
    if config.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    from ._plotting import draw_figures
    from ._sweep import run_experiment

    start = time.perf_counter()
    dataset = run_experiment(config, args.out, progress=not args.no_progress)
    print(
        f"{config.name}: dataset {args.out / 'dataset.nc'} "
        f"({time.perf_counter() - start:.1f} s this call, "
        f"{dataset.attrs['compute_seconds']:.1f} s computing in all)"
    )
    if not args.no_figures:
        for path in draw_figures(dataset, config, args.out):
            print(f"{config.name}: figure {path}")
    return 0

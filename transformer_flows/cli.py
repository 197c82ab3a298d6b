"""`transformer-flows` command line: thin argparse over `transformer_flows.experiment`.

    transformer-flows run CONFIG --out DIR [--smoke] [key=value ...]   (sweeps, theory, fits,
                                                                    pretrained checkpoints)
    transformer-flows fit CONFIG --out DIR [--smoke] [key=value ...]   (fit configs only)
    transformer-flows plot DIR        transformer-flows summarize DIR
    transformer-flows schema          (JSON Schema of the configs, for editors)

Bad input (configs, overrides, output directories) ends with a message naming the key or path
and the fix, exit status 2, and no traceback; failed solves (and a diverged fit: NaN or inf
parameters) end with exit status 3; a missing
pretrained checkpoint ends with its message (what to download, where) and exit status 4.
Ctrl-C ends with one line, "interrupted: k/N chunks saved in DIR; rerun the same command to
resume" (steps for a fit), and exit status 130.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DATASET = "dataset.nc"
EXIT_BAD_INPUT = 2
EXIT_FAILED_SOLVES = 3
# A `pretrained` config whose checkpoint is not on this machine (`make figures` skips it).
EXIT_MISSING_CHECKPOINT = 4
# Ctrl-C (SIGINT), as shells report it: 128 + 2.
EXIT_INTERRUPTED = 130


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/figure3.yaml")
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory; reuse it to resume a run"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="apply the config's `smoke:` overrides (toy size)"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (a first compile over 2 s still says so in one stderr line)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the dataset only")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache (~/.cache/transformer-flows, or "
        "$XDG_CACHE_HOME/transformer-flows; TRANSFORMER_FLOWS_NO_CACHE=1 also turns it off)",
    )
    parser.add_argument(
        "--allow-nonempty-out",
        action="store_true",
        help="claim a non-empty --out that holds no run of transformer-flows (refused "
        "otherwise); nothing there is deleted",
    )
    parser.add_argument(
        "--no-imports",
        action="store_true",
        help="refuse configs that name code (`model.field: module:Class`); same as "
        "TRANSFORMER_FLOWS_NO_IMPORTS=1 (for shared machines and services)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process sweep (docs/scaling.md): call "
        "jax.distributed.initialize() (coordinator, process count and id from the cluster "
        "environment, e.g. SLURM, or from the three options below); every process computes "
        "its own chunks into the same --out on a shared file system, process 0 writes the "
        "dataset and figures",
    )
    parser.add_argument(
        "--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address"
    )
    parser.add_argument(
        "--num-processes", type=int, metavar="N", help="with --distributed: number of processes"
    )
    parser.add_argument(
        "--process-id", type=int, metavar="I", help="with --distributed: this process, 0..N-1"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config values, e.g. sweep.starts=64 solver.name=normalized_euler "
        "solver.dt=0.1 (null restores a default)",
    )


def _version() -> str:
    """The installed distribution's version (metadata only: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-flows")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .` or `make demo`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer-flows",
        description="Simulate and fit the self-attention dynamics on the sphere from YAML "
        "configs: sweeps into labelled, resumable datasets, the paper's figures, fits.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run a config into DIR (dataset or fit, and figures); rerunning resumes",
        description="Run the experiment of a YAML config into DIR: a sweep's labelled dataset "
        "(DIR/dataset.nc, built from verified chunks under DIR/chunks, so an interrupted run "
        "resumes), a theory dataset, or a fit; then the config's figures as PNG.",
    )
    _add_run_options(run)
    run.set_defaults(func=_run, kinds=("simulation", "theory", "fit", "pretrained", "mean_field"))
    fit = commands.add_parser(
        "fit",
        help="learn Q, K, V and/or β by differentiating through the flow",
        description="Run a fit config (experiment: fit) into DIR: params.eqx, metrics.json, "
        "the figures loss and trajectories (before/after); rerunning resumes from "
        "checkpoint.eqx.",
    )
    _add_run_options(fit)
    fit.set_defaults(func=_run, kinds=("fit",))
    plot = commands.add_parser(
        "plot",
        help="redraw the figures of DIR: a sweep's from its saved dataset (no simulation), a "
        "fit's from metrics.json and params.eqx",
    )
    plot.add_argument("out", type=Path, metavar="DIR", help="directory of a finished run")
    plot.add_argument("--figures-dir", type=Path, default=None, help="write the figures here")
    plot.set_defaults(func=_plot)
    summarize = commands.add_parser(
        "summarize",
        help="print the numbers of DIR: a sweep's 50%% levels vs Γ∞,δ and cluster-count "
        "statistics; a fit's loss, held-out metric and parameters before and after",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    summarize.add_argument("out", type=Path, metavar="DIR", help="directory of a finished run")
    summarize.add_argument("--times", type=float, nargs="+", default=[15.0, 30.0])
    summarize.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=[4.0, 9.0],
        help="β values for cluster-count statistics (nearest on the grid)",
    )
    summarize.add_argument("--level", type=float, default=0.5)
    summarize.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json (strict, every digit) or table (aligned plain text, 4 significant digits)",
    )
    summarize.set_defaults(func=_summarize)
    schema = commands.add_parser("schema", help="print the JSON Schema of configs (for editors)")
    schema.set_defaults(func=_schema)
    return parser


@contextlib.contextmanager
def _imports_refused(refused: bool):
    """`--no-imports` for this command only: `main` may be called in-process (tests,
    notebooks), and a switch left in os.environ would refuse the next config's import paths."""
    if not refused:
        yield
        return
    saved = os.environ.get("TRANSFORMER_FLOWS_NO_IMPORTS")
    os.environ["TRANSFORMER_FLOWS_NO_IMPORTS"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRANSFORMER_FLOWS_NO_IMPORTS", None)
        else:
            os.environ["TRANSFORMER_FLOWS_NO_IMPORTS"] = saved


def _run(args: argparse.Namespace) -> int:
    with _imports_refused(args.no_imports):
        return _run_config(args)


def _run_config(args: argparse.Namespace) -> int:
    import jax

    from .experiment import (
        FiguresInterrupted,
        SolveFailures,
        allow_nonempty_out,
        draw_figures,
        initialize_distributed,
        load_config,
        run_experiment,
    )

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed:
        initialize_distributed(*explicit)  # before any other JAX work
    elif any(value is not None for value in explicit):
        raise ValueError(
            "--coordinator, --num-processes and --process-id describe a multi-process run: "
            "add --distributed."
        )

    config = load_config(args.config, args.overrides, smoke=args.smoke)
    if config.experiment not in args.kinds:
        raise ValueError(
            f"{str(args.config)!r} is a {config.experiment!r} config; `{args.command}` runs "
            f"{' and '.join(args.kinds)} configs (use `transformer-flows run`)."
        )
    if args.distributed and config.experiment != "simulation":
        raise ValueError(
            f"--distributed runs simulation sweeps; {str(args.config)!r} is a "
            f"{config.experiment!r} config: run it without --distributed."
        )
    if config.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            if args.allow_nonempty_out:
                stack.enter_context(allow_nonempty_out())
            result = run_experiment(config, args.out, progress=not args.no_progress)
    except SolveFailures as failures:
        print(f"transformer-flows {args.command}: {failures}", file=sys.stderr)
        return EXIT_FAILED_SOLVES
    except FileNotFoundError as missing:
        from .pretrained import MissingCheckpointError

        if not isinstance(missing, MissingCheckpointError):
            raise
        print(f"transformer-flows {args.command}: {missing}", file=sys.stderr)
        return EXIT_MISSING_CHECKPOINT
    seconds = time.perf_counter() - started
    if config.experiment == "fit":
        headline = result["headline"]
        keys = (
            "train_loss",
            headline,
            f"{headline}_before",
            "steps",
            "train_seconds",
            "wall_seconds",
        )
        print(json.dumps({key: result[key] for key in keys}, indent=2))
        if result.get("diverged"):
            print(
                f"transformer-flows {args.command}: the fit diverged: a trained parameter (e.g. "
                f"beta) or the last loss is NaN or inf ({args.out / 'metrics.json'} records "
                "them as null). Fix: a smaller train.learning_rate, train.clip_norm, "
                "precision=float64, or a smaller model.init_scale.",
                file=sys.stderr,
            )
            return EXIT_FAILED_SOLVES
        return 0
    failed = int(result.attrs.get("failed_solves", 0))
    note = f", {failed} failed solves masked" if failed else ""
    print(
        f"{config.name}: dataset {args.out / 'dataset.nc'} ({seconds:.1f} s this call, "
        f"{result.attrs['compute_seconds']:.1f} s computing in all{note})"
    )
    if not args.no_figures and jax.process_index() == 0:  # one process draws
        try:
            for path in draw_figures(result, config, args.out):
                print(f"{config.name}: figure {path}")
        except KeyboardInterrupt:
            raise FiguresInterrupted(
                f"the dataset {DATASET}", args.out, f"`transformer-flows plot {args.out}`"
            ) from None
    return 0


def _is_fit(out: Path) -> bool:
    """Whether `out` holds a fit (its config.yaml says `experiment: fit`); fits have no
    dataset.nc but params.eqx and metrics.json."""
    from .experiment._yaml import MAX_YAML_BYTES, load_yaml

    path = out / "config.yaml"
    if not path.is_file() or path.stat().st_size > MAX_YAML_BYTES:
        return False  # the sweep reader reports what is wrong with such a directory
    raw = load_yaml(path.read_text(), f"{str(path)!r}")
    return isinstance(raw, dict) and raw.get("experiment") == "fit"


def _plot(args: argparse.Namespace) -> int:
    from .experiment import draw_figures, load_dataset

    if _is_fit(args.out):
        from .experiment import redraw_fit

        for path in redraw_fit(args.out, args.figures_dir):
            print(f"fit: figure {path}")
        return 0
    dataset, config = load_dataset(args.out)
    for path in draw_figures(dataset, config, args.figures_dir or args.out):
        print(f"{config.name}: figure {path}")
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from .experiment import load_dataset, summary, summary_table

    if _is_fit(args.out):
        from .experiment import fit_summary, load_fit

        result = fit_summary(*load_fit(args.out))
    else:
        dataset, config = load_dataset(args.out)
        if config.experiment == "mean_field":
            from .experiment._mean_field_run import mean_field_summary

            result = _strict_json(mean_field_summary(dataset, config))
            print(summary_table(result) if args.format == "table" else json.dumps(result, indent=1))
            return 0
        if config.experiment != "simulation":
            raise ValueError(
                f"{str(args.out)!r} holds a {config.experiment} run; nothing to summarize."
            )
        result = summary(dataset, config, args.times, args.betas, args.level)
    result = _strict_json(result)
    if args.format == "table":
        print(summary_table(result))
    else:
        print(json.dumps(result, indent=1, allow_nan=False))
    return 0


def _strict_json(value):
    """Non-finite floats → None (strict JSON has no NaN/Infinity)."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _strict_json(value.item())
    return value


def _schema(args: argparse.Namespace) -> int:
    from .experiment import json_schema

    print(json.dumps(json_schema(), indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `transformer-flows` script. Returns the exit status."""
    parser = build_parser()
    # argparse gives a trailing `nargs="*"` positional only the words before the first
    # option, so `run CONFIG --out DIR a=1` leaves `a=1` over: collect such key=value words.
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command in ("run", "fit") and not args.no_cache:
        from ._compilation_cache import enable_compilation_cache

        # The sweeps draw and normalise their own starts from a validated config: their
        # checks may return NaN (a failed, masked solve) instead of raising, so that their
        # programs can be cached. Fits keep raising (a diverging fit is reported by name).
        enable_compilation_cache(nan_checks=args.command == "run")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as stopped:
        # Ctrl-C: one line (what is saved, how to resume), no traceback. Every file of a run is
        # written to a temporary name and renamed, so nothing half-written is left behind.
        print(str(stopped) or f"transformer-flows {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as err:
        # ConfigError, StoreError (both ValueError), unreadable files: a message, no traceback.
        print(f"transformer-flows {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

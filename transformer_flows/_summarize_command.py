"""`transformer-flows summarize DIR`: the numbers REPRODUCTION.md quotes, as JSON."""

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "summarize",
        help="print 50%% levels vs Γ∞,δ and cluster-count statistics of DIR as JSON",
        description="Read DIR/dataset.nc and print, as JSON: for phase-diagram runs the β where "
        "the mean clustered fraction crosses LEVEL at each --times, beside Γ∞,δ; "
        "for runs with cluster counts, their statistics over starts at --betas.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", type=Path, metavar="DIR", help="directory of a finished run")
    parser.add_argument("--times", type=float, nargs="+", default=[15.0, 30.0])
    parser.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=[4.0, 9.0],
        help="β values for cluster-count statistics (nearest on the grid)",
    )
    parser.add_argument("--level", type=float, default=0.5)
    parser.set_defaults(func=summarize)


def summarize(args: argparse.Namespace) -> int:
    from ._summary import cluster_count_statistics, phase_levels
    from ._sweep import load_dataset

    dataset, config = load_dataset(args.out)
    if config.experiment != "simulation":
        raise ValueError(f"{str(args.out)!r} holds a theory run; nothing to summarize.")
    summary = {
        "name": config.name,
        "solver": dataset.attrs.get("solver"),
        "starts": int(dataset.sizes["start"]),
        "compute_seconds": float(dataset.attrs["compute_seconds"]),
    }
    if "clustered_fraction" in dataset:
        summary["phase_levels"] = phase_levels(dataset, config, args.times, args.level)
    if "cluster_count" in dataset:
        summary["cluster_counts"] = cluster_count_statistics(dataset, args.betas, args.times)
    print(json.dumps(summary, indent=1, default=str))
    return 0

"""`transformer-flows plot DIR`: redraw the figures of a finished run from its dataset."""

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="redraw the figures of DIR from its saved dataset",
        description="Redraw the figures of a finished run from DIR/dataset.nc and the config "
        "saved in it (no simulation).",
    )
    parser.add_argument("out", type=Path, metavar="DIR", help="directory of a finished run")
    parser.add_argument(
        "--figures-dir", type=Path, default=None, help="write the figures here instead of DIR"
    )
    parser.set_defaults(func=plot)


def plot(args: argparse.Namespace) -> int:
    from ._plotting import draw_figures
    from ._sweep import load_dataset

    dataset, config = load_dataset(args.out)
    for path in draw_figures(dataset, config, args.figures_dir or args.out):
        print(f"{config.name}: figure {path}")
    return 0

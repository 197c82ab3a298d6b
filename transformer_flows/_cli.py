"""`transformer-flows` command line: one subcommand per module, each added by its
`register(subparsers)` function (run, plot, summarize, fit)."""

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that define `register(subparsers)`, one per subcommand.
COMMAND_MODULES = ("_run_command", "_plot_command", "_summarize_command", "_fit_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer-flows",
        description="Simulate the self-attention dynamics on the sphere from YAML configs: run "
        "sweeps into labelled, resumable datasets and draw the paper's figures.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


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
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"transformer-flows {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The size of each approximation of the map of a checkpoint onto our fields, and the gaps between
the real layers, the discrete map and the flow (docs/pretrained.md, the tables).

    python experiments/pretrained_approximations.py                  # tiny random models
    python experiments/pretrained_approximations.py --checkpoint DIR  # a real checkpoint

Without `--checkpoint` it builds the tiny random BERT, ALBERT and GPT-2 of
tests/pretrained_models.py (needs the `pretrained` extra: torch CPU and transformers) for
`--seeds` seeds; with one, it measures that checkpoint (no torch needed). Prints markdown.
"""

import argparse
import pathlib
import sys
import tempfile

import numpy as np

import transformer_flows as tf

TEXT = "The quick fox jumps over the lazy dog and the cat sat on the mat while the sun was warm"


def fmt(values) -> str:
    return " / ".join(f"{v:.1e}" if v < 1e-3 else f"{v:.3f}" for v in values)


def measure(model, text: str, kind: str) -> dict[str, np.ndarray]:
    """Rows of `kind` ("relative" or "direction") errors per layer."""
    ids = model.tokenize(text)
    rows = {k: v[kind] for k, v in tf.pretrained.approximation_errors(model, ids).items()}
    three = tf.pretrained.three_way_errors(model, ids, rtol=1e-6, atol=1e-6)
    ideal = tf.pretrained.three_way_errors(
        tf.pretrained.idealized(model), ids, rtol=1e-6, atol=1e-6
    )
    rows["flow vs map (as loaded)"] = three["flow_vs_map"][kind]
    rows["flow vs real (as loaded)"] = three["flow_vs_real"][kind]
    rows["flow vs map (idealized)"] = ideal["flow_vs_map"][kind]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="checkpoint directory")
    parser.add_argument("--seeds", type=int, default=3, help="tiny random models per family")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument(
        "--measure",
        default="relative",
        choices=("relative", "direction"),
        help="relative error |a − b|/|b| (docs' tables) or direction error √(mean |θ_a − θ_b|²)",
    )
    args = parser.parse_args()
    results = {}  # family -> list over models of rows
    if args.checkpoint:
        for directory in args.checkpoint:
            model = tf.pretrained.load_pretrained(directory)
            results.setdefault(f"{model.family} ({directory})", []).append(
                measure(model, args.text, args.measure)
            )
    else:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
        import pretrained_models

        root = pathlib.Path(tempfile.mkdtemp())
        for family in pretrained_models.FAMILIES:
            for seed in range(args.seeds):
                directory = pretrained_models.tiny_checkpoint(
                    family, root / f"{family}{seed}", seed=seed
                )
                model = tf.pretrained.load_pretrained(directory)
                results.setdefault(family, []).append(measure(model, args.text, args.measure))
    for name, runs in results.items():
        layers = len(next(iter(runs[0].values())))
        print(
            f"\n### {name}: {args.measure} error per layer 0..{layers - 1}, {len(runs)} model(s)\n"
        )
        print("| compared | seed 0, per layer | last layer, all seeds (min–max) |")
        print("| --- | --- | --- |")
        for row in runs[0]:
            last = [run[row][-1] for run in runs]
            print(f"| {row} | {fmt(runs[0][row])} | {fmt([min(last), max(last)])} |")


if __name__ == "__main__":
    main()

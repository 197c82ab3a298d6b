"""The families beyond BERT, ALBERT and GPT-2 on tiny random models (docs/pretrained.md,
"Families"): our forward against transformers, the size of each approximation for RoBERTa and
DistilBERT, and LLaMA's exact map and its flow.

    python experiments/pretrained_families.py [--seeds 3]

Builds the tiny RoBERTa, DistilBERT and LLaMA of tests/family_models.py (needs the `pretrained`
extra: torch CPU and transformers). Prints markdown: per layer 0 / 1 / 2, the largest over
the seeds.
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


def measure(family: str, directory, reference_hidden_states) -> dict[str, np.ndarray]:
    model = tf.pretrained.load_pretrained(directory)
    ids = model.tokenize(TEXT)
    real = np.asarray(model.hidden_states(ids))
    rows = {
        "forward vs transformers": tf.pretrained.relative_errors(
            real, reference_hidden_states(directory, ids)
        )
    }
    if family == "llama":
        three = tf.pretrained.three_way_errors(model, ids, rtol=1e-6, atol=1e-6)
        rows["map vs real"] = three["map_vs_real"]
        rows["flow vs map"] = three["flow_vs_map"]
    else:
        errors = tf.pretrained.approximation_errors(model, ids)
        rows |= {f"approximation: {name}": value for name, value in errors.items()}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from family_models import FAMILIES, family_checkpoint
    from pretrained_models import reference_hidden_states

    with tempfile.TemporaryDirectory() as root:
        for family in FAMILIES:
            worst: dict[str, np.ndarray] = {}
            for seed in range(args.seeds):
                directory = family_checkpoint(
                    family, pathlib.Path(root) / f"{family}{seed}", seed=seed
                )
                for name, value in measure(family, directory, reference_hidden_states).items():
                    worst[name] = np.maximum(worst.get(name, value), value)
            print(f"\n### {family} ({args.seeds} seeds, largest)\n")
            print("| quantity | layer 0 / 1 / 2 |\n| --- | --- |")
            for name, value in worst.items():
                print(f"| {name} | {fmt(value)} |")


if __name__ == "__main__":
    main()

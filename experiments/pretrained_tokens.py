"""Tokens as the text has them: the effect of a checkpoint's fixed padding on the hidden states
and their statistics, and the padded batch with an attention mask (issue 18, item 1).

    python experiments/pretrained_tokens.py --checkpoint DIR   # e.g. all-MiniLM-L6-v2

For each text: "padded" is what `tokenize` gave before (tokenizer.json's own padding and
truncation, here to a fixed 128, run without a mask); "text" is `tokenize` now (the text's
tokens only). Errors are relative Frobenius errors over the real tokens against transformers'
forward of the unpadded text (needs the `pretrained` extra: torch CPU and transformers); the
mean pairwise cosine is over all tokens the forward sees. Prints markdown.
"""

import argparse
import os

import numpy as np

import transformer_flows as tf

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Transformers move their tokens on a sphere, and the tokens tend to cluster.",
)


def relative(ours, reference) -> np.ndarray:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(ours - reference, axis=(-2, -1)) / np.linalg.norm(
        reference, axis=(-2, -1)
    )


def reference_states(directory, ids) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids[None].astype(np.int64)), output_hidden_states=True
        )
    return np.stack([h[0].numpy() for h in out.hidden_states])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    model = tf.pretrained.load_pretrained(args.checkpoint)
    as_shipped = Tokenizer.from_file(os.path.join(args.checkpoint, "tokenizer.json"))
    layers = list(range(model.num_layers + 1))
    print("| text | tokens | source | " + " | ".join(f"layer {i}" for i in layers) + " |")
    print("|---|---|---|" + "---|" * len(layers))
    for number, text in enumerate(TEXTS):
        ids = model.tokenize(text)
        n = ids.shape[0]
        padded = np.asarray(as_shipped.encode(text).ids, dtype=np.int32)
        reference = reference_states(args.checkpoint, ids)
        old = np.asarray(model.hidden_states(padded))
        new = np.asarray(model.hidden_states(ids))
        rows = {
            f"padded ({padded.shape[0]} ids): error vs transformers": relative(
                old[:, :n], reference
            ),
            "text: error vs transformers": relative(new, reference),
            f"padded ({padded.shape[0]} ids): mean cosine": tf.pairwise_cosine(old),
            "padded, real tokens only: mean cosine": tf.pairwise_cosine(old[:, :n]),
            "text: mean cosine": tf.pairwise_cosine(new),
        }
        for name, values in rows.items():
            cells = " | ".join(f"{v:.1e}" if abs(v) < 1e-3 else f"{v:.3f}" for v in values)
            print(f"| {number} | {n} | {name} | {cells} |")
    # The padded batch with its mask against each text alone.
    ids, mask = model.tokenize_batch(list(TEXTS))
    batch = np.asarray(model.hidden_states(ids, mask=mask))
    worst = 0.0
    for b, text in enumerate(TEXTS):
        alone = np.asarray(model.hidden_states(model.tokenize(text)))
        worst = max(worst, float(relative(batch[b][:, mask[b]], alone).max()))
    print(
        f"\npadded batch {ids.shape} with mask vs each text alone: max relative error {worst:.1e}"
    )


if __name__ == "__main__":
    main()

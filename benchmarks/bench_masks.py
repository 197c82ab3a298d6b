"""Masked blockwise attention at large n: what skipping masked key blocks saves.

One SA field evaluation (d = 64, float32, identity weights, `BlockwiseAttention(block)`) for
no mask, causal, causal with a sliding window, each with the skip of fully masked key
blocks (`lax.cond` per key block, the default) and without it (`skip_masked=False`: every
block computed, masked entries set to -inf), plus the value-and-gradient of a scalar of the
evaluation for no mask and causal. Compile excluded, `block_until_ready`, min and median of
the repeats. Then the largest difference against the dense evaluation at `--dense-n`.

    python benchmarks/bench_masks.py [--n 8192] [--window 512] [--block 512] [--repeats 3]
"""

import argparse

import jax
import jax.numpy as jnp
from _common import report, table, time_stats

import transformer_flows as tf

D = 64


def evaluation(n, block, skip, grad, **mask):
    field_of = lambda: tf.SelfAttention(  # noqa: E731
        1.0, attention=tf.BlockwiseAttention(block, skip_masked=skip), **mask
    )

    def value(x):
        return field_of().drift(0.0, x)

    if grad:
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(value(x) ** 2)))
    return jax.jit(value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-n", type=int, default=2048)
    parser.add_argument("--no-grad", action="store_true")
    args = parser.parse_args()
    n, w = args.n, args.window
    x = tf.sample_sphere(jax.random.key(0), n, D, dtype=jnp.float32)
    masks = {
        "none": {},
        "causal": dict(causal=True),
        f"causal, window {w}": dict(causal=True, window=w),
    }
    rows, seconds = [], {}
    cases = [(name, skip, False) for name in masks for skip in (True, False)]
    if not args.no_grad:
        cases += [("none", True, True), ("causal", True, True)]
    for name, skip, grad in cases:
        if name == "none" and not skip:
            continue  # nothing to skip without a mask
        fn = evaluation(n, args.block, skip, grad, **masks[name])
        stats = time_stats(fn, x, repeats=args.repeats)
        seconds[(name, skip, grad)] = stats["min"]
        rows.append(
            [
                name,
                "value and grad" if grad else "value",
                "skip" if skip else "all blocks",
                stats["min"],
                stats["median"],
                stats["first"],
            ]
        )
    for row, key in zip(rows, [c for c in cases if not (c[0] == "none" and not c[1])], strict=True):
        reference = seconds.get(("none", True, key[2]))
        row.append(reference / seconds[key] if reference else float("nan"))
    body = table(
        ["mask", "what", "blocks", "min s", "median s", "first s (compile)", "speed-up vs none"],
        rows,
    )
    # Agreement with the dense path where it fits.
    xd = x[: args.dense_n]
    errors = []
    for name, mask in masks.items():
        if name.startswith("causal, window"):
            mask = dict(causal=True, window=min(w, args.dense_n // 4))
        dense = tf.SelfAttention(1.0, attention=tf.DenseAttention(), **mask).drift(0.0, xd)
        blockwise = tf.SelfAttention(
            1.0, attention=tf.BlockwiseAttention(args.block), **mask
        ).drift(0.0, xd)
        errors.append([name, float(jnp.max(jnp.abs(blockwise - dense)))])
    body += (
        f"\n\nn = {n}, d = {D}, float32, block {args.block}.\n\nMax |blockwise - dense| at "
        f"n = {args.dense_n} (float32; window min(w, n/4)):\n\n"
        + table(["mask", "max diff"], errors)
    )
    report("bench_masks", f"Masked blockwise attention, n = {n}", body)


if __name__ == "__main__":
    main()

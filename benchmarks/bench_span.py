"""Cost against d at n = 32 (SA, identity weights): direct solve vs `solve_in_span`.

A batch of starts (vmapped, as in a Fig. 3 panel) is solved on t ∈ [0, 10] observing the
clustered fraction at 50 times; compile excluded, median of repeats.

    python benchmarks/bench_span.py [--ds 2 8 32 128 512 1024 --batch 64]
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from _common import report, table, time_stats  # noqa: E402

import transformer_flows as tf  # noqa: E402

N = 32


def runner(reduce: bool):
    ts = jnp.linspace(0.0, 10.0, 50)

    def one(x0):
        kwargs = dict(rtol=1e-6, atol=1e-6, observe=tf.clustered_fraction)
        if reduce:  # the statistic depends on inner products only
            return tf.solve_in_span(
                tf.SelfAttention(1.0), x0, ts, observe_in_span=True, **kwargs
            ).observed
        return tf.solve(tf.SelfAttention(1.0), x0, ts, **kwargs).observed

    return jax.jit(jax.vmap(one))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ds", type=int, nargs="+", default=[2, 8, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, base = [], {}
    for d in args.ds:
        x0 = tf.sample_sphere(jax.random.key(d), args.batch * N, d).reshape(args.batch, N, d)
        results = {}
        for reduce in (False, True):
            fn = runner(reduce)
            results[reduce] = (time_stats(fn, x0, repeats=args.repeats), fn(x0))
        agree = float(jnp.max(jnp.abs(results[True][1] - results[False][1])))
        if d == N:
            base = {k: v[0] for k, v in results.items()}
        direct, span = results[False][0], results[True][0]
        rows.append(
            [
                d,
                direct["median"],
                span["median"],
                direct["min"],
                span["min"],
                direct["first"] - direct["median"],
                span["first"] - span["median"],
                agree,
            ]
        )
        print(rows[-1], flush=True)
    for row in rows:
        row.insert(5, row[2] / base[True]["median"] if base else float("nan"))
        row.insert(6, row[4] / base[True]["min"] if base else float("nan"))
    headers = [
        "d",
        "direct s (median)",
        "in span s (median)",
        "direct s (min)",
        "in span s (min)",
        "in span / d=32 (median)",
        "in span / d=32 (min)",
        "direct compile s",
        "in span compile s",
        "max |P_span - P_direct|",
    ]
    body = (
        f"n = {N}, batch of {args.batch} starts (vmap), SA β = 1, t ∈ [0, 10], "
        f"Tsit5 rtol = atol = 1e-6, float64, repeats {args.repeats}.\n\n" + table(headers, rows)
    )
    report("bench_span", "Cost against d with span reduction", body)


if __name__ == "__main__":
    main()

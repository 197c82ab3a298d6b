"""Many tiny systems (Fig. 3 workload, n = 32): how to batch adaptive solves.

1. Strategies for one panel (d = 2): `vmap` of the adaptive solve (every lane runs until the
   slowest lane of the whole batch is done) against `sharded_map` chunks run in sequence,
   with the lanes sorted by β or in random order, and the step-count spread that explains it.
2. All six Fig. 3 panels (d = 2, 8, 32, 128, 512, 1024; span reduction for d > 32) on the
   full β grid (90 values) with a reduced number of starts; the full-size time (1024 starts)
   is extrapolated linearly from it and labelled so.

    python benchmarks/bench_throughput.py [--starts 8 --panel-starts 4]
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import report, table, time_call  # noqa: E402

import transformer_flows as tf  # noqa: E402

N, T1, DELTA = 32, 30.0, 1e-3
CHECKPOINTS = jnp.linspace(0.0, T1, 200)
DTYPE = jnp.float32
TOL = 1e-2


def one(beta, x0):
    # The statistic depends on inner products only, so it is observed in span coordinates.
    sol = tf.solve_in_span(
        tf.SelfAttention(beta),
        x0,
        CHECKPOINTS.astype(x0.dtype),
        rtol=TOL,
        atol=TOL,
        solver=diffrax.Bosh3(),
        observe=tf.clustered_fraction,
        observe_in_span=True,
        max_steps=4096,
    )
    return sol.observed, sol.stats["num_steps"]


def inputs(num_betas, starts, d, seed=0):
    betas = np.repeat(np.linspace(0.1, 9.0, num_betas), starts)
    x0 = np.random.default_rng(seed).standard_normal((betas.size, N, d))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    return jnp.asarray(betas, DTYPE), jnp.asarray(x0, DTYPE)


def _sorted_chunk_waste(steps, sorted_steps) -> str:
    if steps.size % 64:
        return "n/a"
    chunk_max = np.repeat(sorted_steps.reshape(-1, 64).max(1), 64)
    return f"{1 - steps.mean() / np.mean(chunk_max):.0%}"


def strategies(num_betas, starts, repeats):
    betas, x0 = inputs(num_betas, starts, 2)
    shuffle = np.random.default_rng(1).permutation(betas.size)
    runs = {
        "vmap (whole batch)": jax.jit(jax.vmap(one)),
        "chunks of 64, sorted by β": jax.jit(
            lambda b, x: tf.sharded_map(one, b, x, chunk_size=64, order=b)
        ),
        "chunks of 256, sorted by β": jax.jit(
            lambda b, x: tf.sharded_map(one, b, x, chunk_size=256, order=b)
        ),
        "chunks of 64, random order": jax.jit(
            lambda b, x: tf.sharded_map(one, b[shuffle], x[shuffle], chunk_size=64)
        ),
    }
    rows, base = [], None
    for name, fn in runs.items():
        seconds, first = time_call(fn, betas, x0, repeats=repeats)
        _, steps = fn(betas, x0)
        base = base or seconds
        rows.append([name, seconds, base / seconds, first - seconds])
        print(rows[-1], flush=True)
    steps = np.asarray(steps, dtype=float)
    sorted_steps = np.sort(steps)
    spread = {
        "steps mean / max": f"{steps.mean():.1f} / {steps.max():.0f}",
        "lane-steps wasted by one vmap": f"{1 - steps.mean() / steps.max():.0%}",
        "wasted, chunks of 64 sorted by steps (lower bound)": _sorted_chunk_waste(
            steps, sorted_steps
        ),
    }
    return rows, spread


def panels(num_betas, starts, repeats):
    rows = []
    fn = jax.jit(jax.vmap(one))
    for d in (2, 8, 32, 128, 512, 1024):
        betas, x0 = inputs(num_betas, starts, d, seed=d)
        seconds, first = time_call(fn, betas, x0, repeats=repeats)
        rows.append([d, betas.size, seconds, first - seconds, seconds * 1024 / starts])
        print(rows[-1], flush=True)
    total = sum(r[-1] for r in rows)
    return rows, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", type=int, default=16)
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--panel-starts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, spread = strategies(args.betas, args.starts, args.repeats)
    panel_rows, total = panels(90, args.panel_starts, max(1, args.repeats - 2))
    body = (
        f"Panel (a): {args.betas} β × {args.starts} starts, n = {N}, d = 2, "
        f"Bosh3, rtol = atol = {TOL:g}, float32, 200 checkpoints on [0, {T1:g}].\n\n"
        + table(["strategy", "median s", "speed-up vs vmap", "compile s"], rows)
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in spread.items())
        + f"\n\nAll six panels, 90 β × {args.panel_starts} starts each (span reduction for "
        f"d > {N}); full size = 1024 starts, extrapolated linearly:\n\n"
        + table(["d", "systems", "median s", "compile s", "extrapolated full-size s"], panel_rows)
        + f"\n\nExtrapolated total for the six full-size panels: {total:.0f} s "
        f"({total / 60:.1f} min)."
    )
    report("bench_throughput", "Throughput of many tiny systems", body)


if __name__ == "__main__":
    main()

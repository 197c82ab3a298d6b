"""Accuracy of the figure setting on the exact equiangular problem (issue 22 item 6).

n = d = 32 tokens started orthonormal, SA with β = 4: they stay equiangular with cosine γ(t)
of (6.9) (`theory.equiangular_cosine`, float64). Error = max over the 61 save times on
[0, 30] and over pairs of |<x_i, x_j> − γ(t)|, as in `bench_fig3a.py`. For each dtype and
tolerance: the error of `tf.solve` (Tsit5, dense-output saves, as the sweeps run) and its
steps; then, at the figure setting, where the error sits: at the steps' ends (a solve saving
t1 only, the same steps) and with `solve_batch(save="clip")` (every save time a step end).

    PYTHONPATH=. python benchmarks/bench_equiangular_accuracy.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import report, table  # noqa: E402
from bench_fig3a import EXACT_BETA, EXACT_TIMES, T1, N, exact_error  # noqa: E402

import transformer_flows as tf  # noqa: E402

TOLERANCES = (1e-4, 5e-5, 3e-5, 2e-5, 1e-5, 1e-6)


def main():
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        x0 = tf.orthonormal_tokens(N, N).astype(dtype)
        field = tf.SelfAttention(jnp.asarray(EXACT_BETA, dtype))

        @jax.jit
        def run(tol, ts):
            sol = tf.solve(field, x0, ts, solver=diffrax.Tsit5(), rtol=tol, atol=tol,
                           max_steps=4096)  # fmt: skip
            return sol.xs, sol.stats["num_steps"]

        ts = jnp.asarray(EXACT_TIMES, dtype)
        for tol in TOLERANCES:
            xs, steps = run(jnp.asarray(tol, dtype), ts)
            rows.append([jnp.dtype(dtype).name, f"tf.solve Tsit5 {tol:g}", exact_error(xs),
                         int(steps)])  # fmt: skip
        ends = jnp.asarray([0.0, T1], dtype)
        xs, steps = run(jnp.asarray(1e-4, dtype), ends)
        rows.append([jnp.dtype(dtype).name, "tf.solve Tsit5 1e-4, saved at t1 only (step end)",
                     exact_error(xs, np.asarray(ends)), int(steps)])  # fmt: skip
        out = tf.solve_batch(field, x0[None], ts, rtol=1e-4, atol=1e-4, save="clip")
        rows.append([jnp.dtype(dtype).name, "solve_batch Tsit5 1e-4, save='clip'",
                     exact_error(out.xs[0]), int(out.num_steps[0])])  # fmt: skip
    body = table(["dtype", "setting", "equiangular error", "steps"], rows)
    report("bench_equiangular_accuracy", "Equiangular error of the figure setting", body)


if __name__ == "__main__":
    main()

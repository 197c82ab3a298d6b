"""Accuracy of the core engine, in float64: the numbers quoted in docs/tour.md and closing notes.

- equiangular error: max |⟨x_i, x_j⟩ − γ_β(t)| over pairs and save times, orthonormal start,
  against `theory.equiangular_cosine` ((6.9)/(6.10), itself checked against scipy to ~1e-11),
  for the default solver at several tolerances and for the authors' NormalizedEuler(dt = 0.1);
- sphere drift max_i | |x_i| − 1 | over t ∈ [0, 1000] for the default solver, with and without
  renormalisation.

Run: .venv/bin/python experiments/core_accuracy.py
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows import theory  # noqa: E402


def equiangular_error(field, n, ts, reference, **options):
    xs = tf.solve(field, tf.orthonormal_tokens(n, n), ts, **options).xs
    gram = np.einsum("tid,tjd->tij", xs, xs)[:, ~np.eye(n, dtype=bool)]
    return np.abs(gram - reference[:, None]).max()


def main():
    tf.enable_compilation_cache()
    ts = np.linspace(0, 30, 301)
    print("equiangular error (orthonormal start), float64")
    for model, n, beta in [("SA", 32, 4.0), ("SA", 8, 1.0), ("USA", 8, 1.0), ("USA", 32, 0.5)]:
        field = tf.SelfAttention(beta) if model == "SA" else tf.UnnormalizedSelfAttention(beta)
        reference = np.asarray(theory.equiangular_cosine(ts, n, beta, model))
        row = [f"{model:>3} n={n:<3} beta={beta:<4}"]
        for tol in (1e-6, 1e-8, 1e-10, 1e-12):
            error = equiangular_error(field, n, ts, reference, rtol=tol, atol=tol)
            row.append(f"tol {tol:.0e}: {error:.1e}")
        euler = equiangular_error(field, n, ts, reference, solver=tf.NormalizedEuler(), dt0=0.1)
        row.append(f"NormalizedEuler dt=0.1: {euler:.1e}")
        print("  " + " | ".join(row))

    rng = np.random.default_rng(0)
    x0 = tf.normalize(jnp.asarray(rng.standard_normal((32, 3))))
    field = tf.SelfAttention(1.0, V=jnp.asarray(rng.standard_normal((3, 3))) / 3)
    ts = jnp.linspace(0, 1000, 1001)
    start = time.perf_counter()
    traj = tf.solve(field, x0, ts, rtol=1e-8, atol=1e-8, max_steps=100_000)
    elapsed = time.perf_counter() - start
    raw = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        1000.0,
        None,
        x0,
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=100_000,
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
    )
    print(
        f"sphere drift over t in [0, 1000] (n=32, d=3, random V, rtol=atol=1e-8): "
        f"renormalised {float(tf.sphere_drift(traj.xs)):.1e} "
        f"({int(traj.stats['num_steps'])} steps, {elapsed:.1f} s incl. compile); "
        f"plain Tsit5 {float(tf.sphere_drift(raw.ys)):.1e}"
    )


if __name__ == "__main__":
    main()

"""Strong and weak orders of the noisy solve (`solve(..., noise=...)`), in float64.

Problem: SelfAttention(β = 1) with V = I, n = 8 tokens on S^2 from a fixed uniform start,
IndependentNoise(κ = 4) (or CommonNoise(σ = 0.5)), t ∈ [0, 1]. For each of K keys the same
Brownian path (one `VirtualBrownianTree`; steps h = 2^-k land on its nodes) drives the solves at
h = 1/8 ... 1/128 and a reference at h = 1/1024 with the same solver. Reported:

- strong error  E max_i |x_i^h(1) − x_i^ref(1)|                      (mean over keys)
- weak error    |E f(X^h(1)) − E f(X^ref(1))|, f = mean_{i≠j} <x_i, x_j>  (same keys)
  with the standard error of the difference of means;
- fitted slopes of log error against log h (least squares over the five step sizes);
- without interaction, E<x(1), x(0)> (exact e^{-(d-1)/κ}) over 8192 independent tokens, and
  its same-path difference from the reference (weak order without Monte Carlo noise).

Run: PYTHONPATH=. python experiments/noise_orders.py [--keys K] [--smoke]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import transformer_flows as tf  # noqa: E402

N, D, T = 8, 3, 1.0
STEPS = (8, 16, 32, 64, 128)
REFERENCE = 1024


def final_states(solver, noise, keys, steps):
    field = tf.SelfAttention(1.0, V=jnp.eye(D))
    x0 = tf.sample_sphere(jax.random.key(7), N, D)
    ts = jnp.array([0.0, T])

    @jax.jit
    def run(keys, dt0):
        def one(key):
            return tf.solve(field, x0, ts, noise=noise, key=key, dt0=dt0, solver=solver).xs[-1]

        return jax.vmap(one)(keys)

    return {h: np.asarray(run(keys, jnp.asarray(T / h))) for h in steps}


def order_table(name, solver, noise, keys):
    start = time.perf_counter()
    out = final_states(solver, noise, keys, (*STEPS, REFERENCE))
    seconds = time.perf_counter() - start
    ref = out[REFERENCE]

    def f(x):
        gram = np.einsum("kid,kjd->kij", x, x)
        return (gram.sum((1, 2)) - N) / (N * (N - 1))

    hs, strong, weak, weak_se = [], [], [], []
    for h in STEPS:
        x = out[h]
        strong.append(np.linalg.norm(x - ref, axis=-1).max(-1).mean())
        diff = f(x) - f(ref)
        weak.append(abs(diff.mean()))
        weak_se.append(diff.std(ddof=1) / np.sqrt(len(diff)))
        hs.append(T / h)
    slope_strong = np.polyfit(np.log(hs), np.log(strong), 1)[0]
    slope_weak = np.polyfit(np.log(hs), np.log(weak), 1)[0]
    print(f"{name}  ({len(keys)} keys, {seconds:.0f} s)")
    for h, s, w, se in zip(hs, strong, weak, weak_se, strict=True):
        print(f"  h = {h:<9.5g} strong {s:.3e}   weak {w:.3e} ± {se:.1e}")
    print(f"  slopes: strong {slope_strong:.2f}, weak {slope_weak:.2f}")
    return slope_strong, slope_weak


def zero_field_weak(solver, tokens=8192, kappa=4.0):
    """No interaction: weak error of E<x(1), x(0)> against exp(-(d-1)/κ) (exact), over
    `tokens` independent tokens driven by one key (no interaction: they are independent)."""
    field = tf.SelfAttention(0.0, V=jnp.zeros((D, D)))
    x0 = jnp.zeros((tokens, D)).at[:, 0].set(1.0)
    ts = jnp.array([0.0, T])

    @jax.jit
    def run(dt0):
        trajectory = tf.solve(
            field,
            x0,
            ts,
            noise=tf.IndependentNoise(kappa),
            key=jax.random.key(1),
            dt0=dt0,
            solver=solver,
            observe=lambda x: x[:, 0],
        )
        return trajectory.observed[-1]

    exact = np.exp(-(D - 1) * T / kappa)
    ref = np.asarray(run(jnp.asarray(T / REFERENCE)))
    errors = []  # same-path differences: the Monte Carlo error of the mean cancels
    print(f"  zero field, {tokens} tokens: E<x(1), x(0)>, exact {exact:.5f}")
    for h in STEPS:
        c = np.asarray(run(jnp.asarray(T / h)))
        diff = c - ref
        errors.append(abs(diff.mean()))
        print(
            f"  h = {T / h:<9.5g} mean {c.mean():.5f} (± {c.std() / np.sqrt(tokens):.1e})  "
            f"minus reference {diff.mean():+.2e} ± {diff.std() / np.sqrt(tokens):.1e}"
        )
    print(f"  reference h = {T / REFERENCE:.3g}: {ref.mean():.5f}")
    hs = [T / h for h in STEPS]
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    print(f"  weak slope of the same-path differences from the reference: {slope:.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=512)
    parser.add_argument("--smoke", action="store_true")
    options = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), 16 if options.smoke else options.keys)
    solvers = {
        "Heun": diffrax.Heun(),
        "EulerHeun": diffrax.EulerHeun(),
        "Euler (projected Itô)": diffrax.Euler(),
        "SPaRK": diffrax.SPaRK(),
        "GeodesicEuler": tf.GeodesicEuler(),
    }
    if options.smoke:
        solvers = {"Heun": diffrax.Heun()}
    for name, solver in solvers.items():
        order_table(f"IndependentNoise(4)  {name}", solver, tf.IndependentNoise(4.0), keys)
        zero_field_weak(solver, 512 if options.smoke else 8192)
    order_table("CommonNoise(0.5)  Heun", diffrax.Heun(), tf.CommonNoise(0.5), keys)


if __name__ == "__main__":
    main()

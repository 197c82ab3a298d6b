"""Attention as Gaussian blurring mean shift (docs/models.md, "Attention as mean shift").

On the sphere |x - y|² = 2 - 2<x, y>, so softmax_j(β<x_i, x_j>) = softmax_j(-β|x_i - x_j|²/2):
one post-LN attention layer with Q = K = V = I and no residual, x_i ← LN(Σ_j A_ij x_j), is one
step of Gaussian blurring mean shift (GBMS) with bandwidth β^{-1/2}, projected back onto the
sphere. The attention matrix is the E-step (responsibilities), the weighted mean the M-step.

This script checks, numerically:
1. the identity (attention matrix = GBMS responsibilities; one layer = one GBMS step);
2. cluster counts: blurring mean shift (iterated attention layers) against non-blurring mean
   shift (queries climb the fixed kernel density of the data) and against `count_clusters` of
   the continuous flow (SA) at growing times, over seeds, with 95% intervals;
3. the contraction law of GBMS for Gaussian data in one dimension (Carreira-Perpiñán 2006):
   with data N(0, s²) and kernel variance σ², one step maps s ↦ s³/(s² + σ²).

    python experiments/mean_shift.py --out out/mean_shift
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import transformer_flows as tf

jax.config.update("jax_enable_x64", True)


def attention_layer(x, beta):
    """x_i ← LN(Σ_j softmax_j(β<x_i, x_j>) x_j): post-LN attention without the residual."""
    return tf.normalize(tf.attention_weights(x, beta, None, None, normalized=True)[0] @ x)


def gbms_step(x, beta):
    """Gaussian blurring mean shift in R^d with kernel exp(-β|x - y|²/2), projected to S^{d-1}."""
    squared = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    responsibilities = jax.nn.softmax(-beta * squared / 2, axis=-1)
    return tf.normalize(responsibilities @ x)


@jax.jit
def blurring_counts(x, beta, delta):
    """Cluster counts after 10, 100 and 1000 attention layers (blurring mean shift steps)."""

    def layer(x, _):
        return attention_layer(x, beta), None

    counts = []
    for layers in (10, 90, 900):  # cumulative 10, 100, 1000
        x, _ = jax.lax.scan(layer, x, None, length=layers)
        counts.append(tf.count_clusters(x, delta))
    return jnp.stack(counts)


@jax.jit
def nonblurring_modes(data, beta):
    """Non-blurring mean shift on the sphere: queries start at the data and climb the fixed
    kernel density Σ_j e^{β<y, x_j>}; y ← LN(Σ_j softmax_j(β<y, x_j>) x_j) to convergence."""

    def climb(y):
        return tf.normalize(jax.nn.softmax(beta * (y @ data.T), axis=-1) @ data)

    def moving(state):
        y, previous, k = state
        return (jnp.max(jnp.abs(y - previous)) > 1e-12) & (k < 5000)

    def step(state):
        y, _, k = state
        return climb(y), y, k + 1

    y, _, steps = jax.lax.while_loop(moving, step, (climb(data), data, 1))
    return y, steps


def flow_counts(x0, beta, times, delta):
    trajectory = tf.solve(
        tf.SelfAttention(beta),
        x0,
        jnp.concatenate([jnp.zeros(1), jnp.asarray(times)]),
        rtol=1e-6,
        atol=1e-6,
        max_steps=200_000,
        observe=lambda x: tf.count_clusters(x, delta),
    )
    return np.asarray(trajectory.observed[1:])


def interval(values, rng, resamples=4000):
    values = np.asarray(values, float)
    means = rng.choice(values, (resamples, values.size)).mean(axis=1)
    return float(values.mean()), *np.percentile(means, [2.5, 97.5]).tolist()


def contraction(n, s0, sigma, steps, seed):
    """Empirical standard deviations of 1-d GBMS iterates of N(0, s0²) data (kernel variance
    σ²), evaluated in query blocks, against the law s ↦ s³/(s² + σ²)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, s0, n)
    # The law starts from the sample's own deviation: what is tested is the map, not sampling.
    empirical, law = [float(x.std())], [float(x.std())]
    for _ in range(steps):
        new = np.empty_like(x)
        for start in range(0, n, 1000):
            q = x[start : start + 1000, None]
            logits = -((q - x[None, :]) ** 2) / (2 * sigma**2)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            new[start : start + 1000] = (weights @ x) / weights.sum(axis=1)
        x = new
        empirical.append(float(x.std()))
        law.append(law[-1] ** 3 / (law[-1] ** 2 + sigma**2))
    return empirical, law


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/mean_shift"))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--betas", type=float, nargs="+", default=[4.0, 9.0, 16.0, 25.0])
    parser.add_argument("--delta", type=float, default=1e-3)
    parser.add_argument("--sample", type=int, default=20_000, help="1-d sample size, part 3")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    report = {}

    # 1. The identity.
    x = tf.sample_sphere(jax.random.key(0), 200, args.d)
    for beta in (1.0, 9.0, 100.0):
        attention = tf.attention_weights(x, beta, None, None, normalized=True)[0]
        squared = jnp.sum((x[:, None] - x[None]) ** 2, axis=-1)
        responsibilities = jax.nn.softmax(-beta * squared / 2, axis=-1)
        report[f"identity_beta_{beta:g}"] = {
            "max |A - responsibilities|": float(jnp.max(jnp.abs(attention - responsibilities))),
            "max |layer - GBMS step|": float(
                jnp.max(jnp.abs(attention_layer(x, beta) - gbms_step(x, beta)))
            ),
        }

    # 2. Cluster counts over seeds.
    times = [10.0, 100.0, 1000.0]
    rows = []
    for beta in args.betas:
        blurring, nonblurring, flow = [], [], []
        for seed in range(args.seeds):
            x0 = tf.sample_sphere(jax.random.key(seed), args.n, args.d)
            blurring.append(np.asarray(blurring_counts(x0, beta, args.delta)))
            climbed, _ = nonblurring_modes(x0, beta)
            nonblurring.append(int(tf.count_clusters(climbed, args.delta)))
            flow.append(flow_counts(x0, beta, times, args.delta))
        flow, blurring = np.stack(flow), np.stack(blurring)
        row = {"beta": beta, "non-blurring mean shift modes": interval(nonblurring, rng)}
        for i, t in enumerate(times):
            row[f"blurring mean shift after {t:g} layers"] = interval(blurring[:, i], rng)
            row[f"flow count_clusters at t = {t:g}"] = interval(flow[:, i], rng)
        row["non-blurring modes = blurring count after 10 layers (fraction)"] = float(
            np.mean(np.array(nonblurring) == blurring[:, 0])
        )
        rows.append(row)
        print(json.dumps(row))
    report["cluster_counts"] = rows

    # 3. The contraction law.
    empirical, law = contraction(args.sample, 1.0, 0.5, 4, seed=1)
    report["contraction"] = {
        "n": args.sample,
        "s0": 1.0,
        "sigma": 0.5,
        "empirical s_k": empirical,
        "law s_k": law,
        "relative error": [abs(e - w) / w for e, w in zip(empirical, law, strict=True)],
    }
    report["seconds"] = time.perf_counter() - start
    (args.out / "mean_shift.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "cluster_counts"}, indent=2))


if __name__ == "__main__":
    main()

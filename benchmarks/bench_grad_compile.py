"""Gradient-step cost and compile times.

1. A training-style step: loss = mean over a batch of starts of Σ_{i≠j} <x_i(T), x_j(T)>²
   for SA with weights (Q, K, V) and β (n = 32, d = 8, T = 5, Tsit5 rtol = 1e-6, float64);
   time of the forward solve and of `value_and_grad` w.r.t. (β, Q, K, V) with the two adjoints.
2. The gradient of one field evaluation at large n (d = 64, float32): dense vs blockwise,
   time and peak memory increase (the blockwise backward recomputes each query block).
3. Compile (first-call minus steady-state) times of the entry points above.

    python benchmarks/bench_grad_compile.py
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import report, table, time_call  # noqa: E402
from bench_scaling_n import peak_of  # noqa: E402

import transformer_flows as tf  # noqa: E402


def training_rows(batch: int, repeats: int):
    n, d = 32, 8
    key = jax.random.key(0)
    Q, K, V = tf.random_weights(key, d)
    params = (jnp.asarray(1.0), Q, K, V)
    x0 = tf.sample_sphere(jax.random.key(1), batch * n, d).reshape(batch, n, d)
    ts = jnp.array([0.0, 5.0])

    def loss(params, adjoint):
        beta, Q, K, V = params

        def one(x):
            x1 = tf.solve(
                tf.SelfAttention(beta, Q, K, V),
                x,
                ts,
                rtol=1e-6,
                atol=1e-6,
                adjoint=adjoint,
                max_steps=1024,
            ).xs[-1]
            gram = x1 @ x1.T
            return jnp.sum(gram**2) - n

        return jnp.mean(jax.vmap(one)(x0))

    rows = []
    forward = jax.jit(lambda p: loss(p, diffrax.RecursiveCheckpointAdjoint()))
    seconds, first = time_call(forward, params, repeats=repeats)
    rows.append([f"forward solve (batch {batch})", seconds, first - seconds, 1.0])
    for name, adjoint in (
        ("RecursiveCheckpointAdjoint", diffrax.RecursiveCheckpointAdjoint()),
        ("BacksolveAdjoint", diffrax.BacksolveAdjoint()),
    ):
        step = jax.jit(jax.value_and_grad(lambda p, a=adjoint: loss(p, a)))
        s, f = time_call(step, params, repeats=repeats)
        rows.append([f"value_and_grad, {name}", s, f - s, s / seconds])
    return rows


def large_n_rows(ns, repeats: int):
    rows = []
    for n in ns:
        x = tf.sample_sphere(jax.random.key(n), n, 64).astype(jnp.float32)
        w = jax.random.normal(jax.random.key(7), (n, 64), jnp.float32)
        for name, method in (
            ("dense", tf.DenseAttention()),
            ("blockwise 512", tf.BlockwiseAttention(512)),
        ):
            if name == "dense" and n > 8192:
                continue

            def loss(beta, x, method=method):
                return jnp.sum(tf.SelfAttention(beta, attention=method)(0.0, x) * w)

            start = time.perf_counter()
            grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(jnp.float32(1.0), x).compile()
            compile_s = time.perf_counter() - start
            seconds, _ = time_call(grad, jnp.float32(1.0), x, repeats=repeats, warmup=1)
            delta, _ = peak_of(grad, jnp.float32(1.0), x)
            rows.append([n, name, seconds, delta, compile_s])
            print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ns", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train = training_rows(args.batch, args.repeats)
    big = large_n_rows(args.ns, args.repeats)
    body = (
        "Training-style step: SA with (β, Q, K, V), n = 32, d = 8, T = 5, float64, "
        f"batch {args.batch}.\n\n"
        + table(["step", "median s", "compile s (first - median)", "× forward"], train)
        + "\n\nGradient of one field evaluation w.r.t. (β, x), d = 64, float32:\n\n"
        + table(["n", "method", "grad s", "peak increase MB", "compile s"], big)
    )
    report("bench_grad_compile", "Gradient steps and compile times", body)


if __name__ == "__main__":
    main()

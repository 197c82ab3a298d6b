"""Cost of fitting: one gradient step against one forward solve, and memory against the
number of checkpoints of `RecursiveCheckpointAdjoint`.

Not a test. Times exclude compilation (every function is called once first), block until the
result is ready, and report the median of `--repeats` runs.

    PYTHONPATH=. python benchmarks/fit_gradient_cost.py            # both parts
    PYTHONPATH=. python benchmarks/fit_gradient_cost.py --part ratio --repeats 9
"""

import argparse
import json
import os
import platform
import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import transformer_flows as tf


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` (compiled first); the minimum is kept in MINIMA as well,
    since on a shared machine it is the steadier of the two."""
    jax.block_until_ready(fn())  # compile (excluded)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - began)
    MINIMA.append(min(times))
    return statistics.median(times)


MINIMA: list[float] = []


def two_clusters(n: int):
    """The fit_two_clusters.yaml problem (d = 3, random Q, K, V)."""
    keys = jax.random.split(jax.random.key(0), 3)
    model = tf.SelfAttention(
        jnp.asarray(1.0, dtype=jnp.float32),
        *(jax.random.normal(k, (3, 3)) / jnp.sqrt(3.0) for k in keys),
    )
    task = tf.LabeledTargets(
        tf.LabeledInputs([[0, 0, 1.0], [0, 0, -1.0]], n=n), [[1.0, 0, 0], [-1.0, 0, 0]]
    )
    return model, task


def ratio(args) -> list[dict]:
    rows = []
    flows = {
        "tsit5 rtol=atol=1e-3 (config)": tf.FlowOptions(horizon=5.0, rtol=1e-3, atol=1e-3),
        "normalized_euler dt0=0.25 (20 steps)": tf.FlowOptions(
            horizon=5.0, solver=tf.NormalizedEuler(), dt0=0.25
        ),
        "tsit5 + BacksolveAdjoint": tf.FlowOptions(
            horizon=5.0, rtol=1e-3, atol=1e-3, adjoint=diffrax.BacksolveAdjoint()
        ),
    }
    for n in args.tokens:
        model, task = two_clusters(n)
        for name, flow in flows.items():
            key = jax.random.key(1)
            forward = eqx.filter_jit(
                lambda m, k, flow=flow: tf.batch_loss(m, task, flow, k, args.batch)
            )
            gradient = eqx.filter_jit(
                eqx.filter_value_and_grad(
                    lambda m, k, flow=flow: tf.batch_loss(m, task, flow, k, args.batch)
                )
            )
            optimizer = optax.adam(1e-3)
            spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
            step = tf.make_step(task, optimizer, flow, spec, args.batch)
            opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
            t_forward = median_seconds(lambda: forward(model, key), args.repeats)
            t_gradient = median_seconds(lambda: gradient(model, key), args.repeats)
            t_step = median_seconds(lambda: step(model, opt_state, key)[2], args.repeats)
            min_forward, _, min_step = MINIMA[-3:]
            rows.append(
                {
                    "n": n,
                    "batch": args.batch,
                    "flow": name,
                    "forward_ms": 1e3 * t_forward,
                    "value_and_grad_ms": 1e3 * t_gradient,
                    "step_ms": 1e3 * t_step,
                    "step_over_forward": t_step / t_forward,
                    "min_step_over_min_forward": min_step / min_forward,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def memory(args) -> list[dict]:
    """Gradient of a readout of x(T) for one input: n tokens in d dims, fixed-step
    Renormalized(RK4) with `--memory-steps` steps, so the step count is exact."""
    n, d, steps = args.memory_tokens, args.memory_dim, args.memory_steps
    keys = jax.random.split(jax.random.key(2), 5)
    model = tf.SelfAttention(
        jnp.asarray(1.0, dtype=jnp.float32),
        *(jax.random.normal(k, (d, d)) / jnp.sqrt(d) for k in keys[:3]),
    )
    x0 = tf.sample_sphere(keys[3], n, d)
    readout = jax.random.normal(keys[4], (n, d))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    dt = 0.05
    rows = []
    adjoints = [
        (
            f"RecursiveCheckpointAdjoint(checkpoints={c})",
            diffrax.RecursiveCheckpointAdjoint(checkpoints=c),
        )
        for c in args.checkpoints
    ]
    adjoints.append(
        (
            "RecursiveCheckpointAdjoint() (checkpoints=None, diffrax default)",
            diffrax.RecursiveCheckpointAdjoint(),
        )
    )
    adjoints.append(("BacksolveAdjoint()", diffrax.BacksolveAdjoint()))
    for name, adjoint in adjoints:

        def loss(p, x, adjoint=adjoint):
            field = eqx.combine(p, static)
            trajectory = tf.solve(
                field,
                x,
                jnp.array([0.0, steps * dt]),
                solver=tf.Renormalized(tf.RK4()),
                dt0=dt,
                max_steps=steps,
                adjoint=adjoint,
            )
            return jnp.sum(readout * trajectory.xs[-1])

        grad = jax.jit(jax.grad(loss))
        compiled = grad.lower(params, x0).compile()
        analysis = compiled.memory_analysis()
        temp = None if analysis is None else analysis.temp_size_in_bytes
        seconds = median_seconds(lambda: compiled(params, x0), args.repeats)
        forward = jax.jit(loss)
        t_forward = median_seconds(lambda: forward(params, x0), args.repeats)
        rows.append(
            {
                "adjoint": name,
                "n": n,
                "d": d,
                "steps": steps,
                "temp_bytes": temp,
                "state_bytes": n * d * 4,
                "grad_ms": 1e3 * seconds,
                "forward_ms": 1e3 * t_forward,
                "grad_over_forward": seconds / t_forward,
                "min_grad_over_min_forward": MINIMA[-2] / MINIMA[-1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["ratio", "memory", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--memory-tokens", type=int, default=64)
    parser.add_argument("--memory-dim", type=int, default=16)
    parser.add_argument("--memory-steps", type=int, default=256)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[2, 4, 8, 16, 64, 256])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    print(
        json.dumps(
            {
                "machine": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "dtype": "float32",
            }
        ),
        flush=True,
    )
    rows = {}
    if args.part in ("ratio", "both"):
        rows["ratio"] = ratio(args)
    if args.part in ("memory", "both"):
        rows["memory"] = memory(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

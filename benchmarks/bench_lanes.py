"""No lane idles (issue 22 item 2): `solve_batch`'s work queue against the lock-stepped batch.

Reduced Fig. 3(a) workload: SA with Q = K = V = I, n = 32, d = 2, `--betas` β in [0.1, 9] ×
`--starts` Gaussian starts, t ∈ [0, 30], the clustered fraction (δ = 10⁻³) at 31 times, Tsit5
rtol = atol = 1e-4, float32. For each lane count: the useful-evaluation share
(Σ steps / (loop trips × lanes)) and the process CPU time of one call (compile excluded,
`block_until_ready`), minimum over `--rounds` interleaved rounds; the saves and per-system
step counts are compared with the lock-stepped batch (lanes = B). With `--main-module PATH`
(a copy of main's `transformer_flows/_solve_batch.py`, e.g. from `git show
main:transformer_flows/_solve_batch.py > /tmp/main_solve_batch.py`) main's loop runs beside.

Run it on one pinned core, single-threaded XLA (the method of issue 22):

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python benchmarks/bench_lanes.py --lanes 256 64 32
"""

import argparse
import importlib.util
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import block, report, table

import transformer_flows as tf

N, D, T1, DELTA = 32, 2, 30.0, 1e-3


def clustered_fraction(x):
    n = x.shape[-2]
    gram = sum(x[:, None, c] * x[None, :, c] for c in range(x.shape[-1]))
    return ((jnp.sum(gram >= 1 - DELTA) - n) / (n * (n - 1))).astype(x.dtype)


def workload(num_betas, starts, seed=0):
    betas = np.repeat(np.linspace(0.1, 9.0, num_betas), starts)
    x = np.random.default_rng(seed).standard_normal((betas.size, N, D))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return jnp.asarray(betas, jnp.float32), jnp.asarray(x, jnp.float32)


def program(solve_batch, lanes, tol):
    ts = jnp.linspace(0.0, T1, 31, dtype=jnp.float32)
    extra = {} if lanes is None else {"lanes": lanes}

    def run(betas, x0s):
        out = solve_batch(
            eqx.filter_vmap(tf.SelfAttention)(betas), x0s, ts, batched_field=True, rtol=tol,
            atol=tol, observe=clustered_fraction, max_steps=4096, **extra,
        )  # fmt: skip
        trips = getattr(out, "num_lane_steps", jnp.max(out.num_steps) * x0s.shape[0])
        return out.observed, out.num_steps, trips

    return jax.jit(run)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=int, default=16)
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--lanes", type=int, nargs="+", default=[256, 64, 32])
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--main-module", default=None)
    args = parser.parse_args()
    betas, x0s = workload(args.betas, args.starts)
    batch = betas.shape[0]
    sides = {f"lanes={lanes}": program(tf.solve_batch, lanes, args.tol) for lanes in args.lanes}
    if args.main_module:
        spec = importlib.util.spec_from_file_location(
            "transformer_flows._solve_batch_main", args.main_module
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sides = {"main (lock-stepped)": program(module.solve_batch, None, args.tol)} | sides
    outputs, compile_s = {}, {}
    for name, fn in sides.items():
        start = time.process_time()
        outputs[name] = block(fn(betas, x0s))
        compile_s[name] = time.process_time() - start
    cpu = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            start = time.process_time()
            block(fn(betas, x0s))
            cpu[name].append(time.process_time() - start)
    reference = outputs.get("main (lock-stepped)", outputs[f"lanes={max(args.lanes)}"])
    rows = []
    for name in sides:
        observed, steps, lane_steps = outputs[name]
        steps = np.asarray(steps)
        rows.append([
            name, float(steps.sum() / float(lane_steps)), float(steps.mean()), int(steps.max()),
            int(np.sum(steps != np.asarray(reference[1]))),
            float(np.max(np.abs(np.asarray(observed) - np.asarray(reference[0])))),
            min(cpu[name]), float(np.median(cpu[name])), compile_s[name],
        ])  # fmt: skip
    body = (
        f"{batch} systems ({args.betas} β × {args.starts} starts), n = {N}, d = {D}, t ≤ {T1}, "
        f"Tsit5 rtol = atol = {args.tol:g}, float32, 31 saves; process CPU time of one call, "
        f"{args.rounds} interleaved rounds; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"CPU affinity {sorted(os.sched_getaffinity(0))}.\n\n"
        + table(
            [
                "side",
                "useful share",
                "mean steps",
                "max steps",
                "systems with other step count",
                "max |Δ saved fraction|",
                "CPU s min",
                "CPU s median",
                "first call CPU s",
            ],
            rows,
        )  # fmt: skip
    )
    report("bench_lanes", "solve_batch lanes (work queue)", body)


if __name__ == "__main__":
    main()

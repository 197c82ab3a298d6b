"""One field evaluation and one short solve as n grows (d = 64, float32, SA, identity weights).

Reports time (compile excluded, median), peak memory and achieved FLOP/s against the
machine's measured matmul rate. Peak memory is the resident-set high-water mark of the
process during the call (Linux /proc/self/status VmHWM after resetting it through
/proc/self/clear_refs), given as the increase over the resident set before the call and as the
whole process peak (which includes the JAX runtime, ~0.25 GB).

FLOPs counted: scores and mixing, 2·n²·(k + d) per evaluation (k = d = 64); the
exponentials (n² of them) are not counted, so the figure is a lower bound.

    python benchmarks/bench_scaling_n.py [--ns 256 1024 4096 16384 65536]
"""

import argparse
import re
import time

import jax
import jax.numpy as jnp
from _common import report, table, time_call

import transformer_flows as tf

D = 64


def memory_mb() -> dict[str, float]:
    with open("/proc/self/status") as f:
        text = f.read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def peak_of(fn, *args) -> tuple[float, float]:
    """(increase of the RSS high-water mark over the RSS before the call, process peak), MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan"), float("nan")
    before = memory_mb()["VmRSS"]
    jax.block_until_ready(fn(*args))
    peak = memory_mb()["VmHWM"]
    return peak - before, peak


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a).lower(a).compile()
    seconds, _ = time_call(f, a, repeats=repeats)
    return 2 * size**3 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536])
    parser.add_argument(
        "--solve-max-n",
        type=int,
        default=4096,
        help="largest n for the solve timing (20 field evaluations each)",
    )
    parser.add_argument("--dense-max-n", type=int, default=8192)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rate = matmul_rate()
    print(f"matmul rate (float32, 2048^3): {rate / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    methods = {
        "dense": tf.DenseAttention(),
        f"blockwise {args.block}": tf.BlockwiseAttention(args.block),
    }
    for n in args.ns:
        x = tf.sample_sphere(jax.random.key(n), n, D).astype(jnp.float32)
        flops = 2 * n * n * (D + D)
        for name, method in methods.items():
            if name == "dense" and n > args.dense_max_n:
                continue
            field = tf.SelfAttention(jnp.float32(1.0), attention=method)
            start = time.perf_counter()
            evaluate = jax.jit(lambda x, f=field: f(0.0, x)).lower(x).compile()
            compile_s = time.perf_counter() - start
            repeats = args.repeats if n <= 16384 else 1
            seconds, _ = time_call(evaluate, x, repeats=repeats, warmup=0 if n > 16384 else 1)
            delta, peak = peak_of(evaluate, x)
            solve_s = float("nan")
            if n <= args.solve_max_n:
                ts = jnp.linspace(0, 0.5, 2, dtype=jnp.float32)

                def run(x, f=field, ts=ts):
                    return tf.solve(f, x, ts, solver=tf.Renormalized(tf.RK4()), dt0=0.1).xs

                solve = jax.jit(run).lower(x).compile()
                solve_s, _ = time_call(solve, x, repeats=args.repeats)
            rows.append(
                [
                    n,
                    name,
                    seconds,
                    flops / seconds / 1e9,
                    100 * flops / seconds / rate,
                    delta,
                    peak,
                    compile_s,
                    solve_s,
                ]
            )
            print(rows[-1], flush=True)
    headers = [
        "n",
        "method",
        "field eval s",
        "GFLOP/s",
        "% of matmul rate",
        "peak increase MB",
        "process peak MB",
        "compile s",
        "solve s (RK4, 5 steps)",
    ]
    body = (
        f"d = {D}, float32, SelfAttention with identity weights. Matmul rate (float32 "
        f"2048³): {rate / 1e9:.1f} GFLOP/s. Repeats {args.repeats} (1 above n = 16384).\n\n"
        + table(headers, rows)
    )
    report("bench_scaling_n", "Field evaluation and solve as n grows", body)


if __name__ == "__main__":
    main()

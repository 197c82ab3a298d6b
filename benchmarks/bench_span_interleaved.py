"""d = 1024 in span vs d = 32, timed interleaved (robust to load changes on a shared machine).

PYTHONPATH=.:benchmarks python benchmarks/bench_span_interleaved.py [--rounds 7]
"""

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

from _common import report, table  # noqa: E402
from bench_span import N, runner  # noqa: E402

import transformer_flows as tf  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ds", type=int, nargs="+", default=[32, 128, 1024])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    programs = {}
    for d in args.ds:
        x0 = tf.sample_sphere(jax.random.key(d), args.batch * N, d).reshape(args.batch, N, d)
        fn = runner(reduce=True)
        fn(x0).block_until_ready()
        programs[d] = (fn, x0)
    times = {d: [] for d in programs}
    for _ in range(args.rounds):
        for d, (fn, x0) in programs.items():
            start = time.perf_counter()
            fn(x0).block_until_ready()
            times[d].append(time.perf_counter() - start)
    base = statistics.median(times[args.ds[0]])
    rows = [
        [d, statistics.median(t), min(t), statistics.median(t) / base] for d, t in times.items()
    ]
    body = (
        f"n = {N}, batch {args.batch}, `solve_in_span` (d <= {N}: plain solve), Tsit5 1e-6 "
        f"float64, {args.rounds} interleaved rounds.\n\n"
        + table(["d", "median s", "min s", f"median / d={args.ds[0]}"], rows)
    )
    report("bench_span_interleaved", "Span reduction, interleaved timing", body)


if __name__ == "__main__":
    main()

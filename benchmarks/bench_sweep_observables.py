"""Where the Fig. 3(a) sweep chunk's time goes: the solve, the clustered fraction, the cluster
counts, and the rest of the observation pass.

The chunk of `bench_sweep_queue.py` (configs/figure3.yaml at d = 2, `--betas` × `--starts`
systems in one chunk: n = 32, 151 saves, Tsit5 rtol = atol = 1e-4, float32, observables
`clustered_fraction` and `cluster_count`, delta 1e-3, through `solve_batch`'s work queue, which
saves the states and observes them after the loop). Timed parts, each a jitted call on the
same inputs, compile excluded, `block_until_ready`, process CPU time, minimum and median over
`--rounds` interleaved rounds:

- `chunk program`: the sweep program as `run_sweep` runs it (solve + observation);
- `solve only`: the same program with the observation pass replaced by returning the states;
- `observation pass: <names>`: `_observe_saved` (placeholder for unreached saves, finiteness
  checks, the observers vmapped over systems and saves) on the chunk's saved states, with
  both observables, each alone, and none (the pass's own overhead).

Rows marked "before" trace the cluster labels with min-label propagation at every n (the
algorithm `cluster_labels` used for every n before the bit-set closure for n <= 32): the
before/after comparison runs in one process on the same inputs, interleaved; the chunk's
outputs of both sides are compared (cluster counts equal, clustered fractions bitwise).

Run it on one pinned core, single-threaded XLA (the method of issue 22):

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      taskset -c 0 env PYTHONPATH=.:benchmarks python benchmarks/bench_sweep_observables.py
"""

import argparse
import contextlib
import os
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from _common import block, report, table
from bench_sweep_queue import fig3a_config

from transformer_flows import _observables
from transformer_flows.experiment import _program, plan_sweep
from transformer_flows.experiment._program import Observer, _build_program, chunk_inputs


def cpu_call(fn, inputs):
    start = time.process_time()
    outputs = block(fn(*inputs))
    return outputs, time.process_time() - start


def states_only(observers, xs):
    """In place of `_observe_saved`: the saved states themselves, every system finite."""
    return {"xs": xs}, jnp.ones(xs.shape[0], bool)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=int, default=16)
    parser.add_argument("--starts", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = fig3a_config(args.betas, args.starts)
    plan = plan_sweep(config)
    (shape,) = plan.shapes
    inputs = chunk_inputs(config, plan, shape, 0)
    delta = config.observables.delta
    before = mock.patch.object(_observables, "_CLOSURE_MAX_TOKENS", 0)

    first = {}

    def traced(name, fn, part_inputs, patch=None):
        """fn compiled now (under `patch`: the labels' algorithm is chosen at trace time)."""
        with patch or contextlib.nullcontext():
            first[name] = cpu_call(fn, part_inputs)[1]
        return fn, part_inputs

    full = _build_program(config, shape, plan)
    full_before = _build_program(config, shape, plan)
    with mock.patch.object(_program, "_observe_saved", states_only):
        solve_only = _build_program(config, shape, plan)
        (saved, *_), first["solve only"] = cpu_call(solve_only, inputs)  # compiled here
    xs = saved["xs"]
    betas = inputs[1]

    def observation(names):
        @jax.jit
        def run(betas, xs):
            observers = Observer(betas, names, delta, config.observables.harmonic)
            return _program._observe_saved(observers, xs)

        return run

    parts = {
        "chunk program": traced("chunk program", full, inputs),
        "chunk program, before": traced("chunk program, before", full_before, inputs, before),
        "solve only": (solve_only, inputs),
    }
    names = tuple(config.observables.names)
    for subset in (names, *((name,) for name in names), ()):
        label = f"observation pass: {', '.join(subset) or 'none'}"
        parts[label] = traced(label, observation(subset), (betas, xs))
        if "cluster_count" in subset:
            parts[f"{label}, before"] = traced(
                f"{label}, before", observation(subset), (betas, xs), before
            )
    times = {name: [] for name in parts}
    outputs = {}
    for _ in range(args.rounds):
        for name, (fn, part_inputs) in parts.items():
            outputs[name], seconds = cpu_call(fn, part_inputs)
            times[name].append(seconds)
    rows = [[name, min(times[name]), float(np.median(times[name])), first[name]] for name in parts]
    observed = jax.device_get(outputs["chunk program"][0])
    old = jax.device_get(outputs["chunk program, before"][0])
    same_counts = np.array_equal(observed["cluster_count"], old["cluster_count"])
    same_fractions = np.array_equal(
        np.asarray(observed["clustered_fraction"]).view(np.uint32),
        np.asarray(old["clustered_fraction"]).view(np.uint32),
    )
    same_success = np.array_equal(outputs["chunk program"][1], outputs["chunk program, before"][1])
    chunk = {name: min(times[name]) for name in ("chunk program", "chunk program, before")}
    counts = np.asarray(observed["cluster_count"])
    fraction = np.asarray(observed["clustered_fraction"])
    n = shape.n
    body = (
        f"{xs.shape[0]} systems ({args.betas} β × {args.starts} starts, one chunk of configs/"
        f"figure3.yaml at d = 2): n = {n}, {xs.shape[1]} saves, Tsit5 rtol = atol = 1e-4, "
        f"float32; process CPU time of one call, {args.rounds} interleaved rounds; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; CPU affinity "
        f"{sorted(os.sched_getaffinity(0))}.\n\n"
        + table(["part", "CPU s min", "CPU s median", "first call CPU s (compile)"], rows)
        + f"\n\nChunk before / after {chunk['chunk program, before'] / chunk['chunk program']:.2f}×"
        f" (min over rounds); chunk after / solve only "
        f"{chunk['chunk program'] / min(times['solve only']):.2f}×. "
        f"After vs before: cluster counts equal {same_counts}, clustered fractions bitwise "
        f"equal {same_fractions}, success flags equal {same_success}. "
        f"Saves fully clustered (count 1) {np.mean(counts == 1):.3f}, fully spread "
        f"(count n) {np.mean(counts == n):.3f}, with no adjacent pair "
        f"{np.mean(fraction == 0):.3f}, all pairs adjacent {np.mean(fraction == 1):.3f}."
    )
    report("bench_sweep_observables", "Fig. 3(a) sweep chunk: solve vs observables", body)


if __name__ == "__main__":
    main()

"""Sweep programs through `solve_batch`'s work queue (issue 22 items 2 and 5).

The sweep program of a chunk (`experiment/_program.py`) as `run_sweep` builds it, before (a
vmapped `solve`: every lane runs the chunk's slowest system's steps) and after (the work
queue: a lane whose system reaches t1 takes the chunk's next system). Both sides run in one
process, on the same chunk inputs, interleaved; each side's time is the process CPU time of
one call (compile excluded, `block_until_ready`), minimum and median over `--rounds` rounds.
The useful share is Σ steps / lane steps (vmapped: chunk × slowest system's steps; queue: loop
trips × lanes).

Two workloads:

- `fig3a` (default): configs/figure3.yaml at d = 2 with `--betas` β in [0.1, 9] × `--starts`
  starts in one chunk (16 × 128 = 2048 systems: n = 32, d = 2, t ≤ 30, 151 saves, Tsit5
  rtol = atol = 1e-4, float32, clustered fraction and cluster count). Also compared: systems
  whose step count differs, max |Δ clustered fraction|, cluster counts that differ.
- `fig5`: configs/figure5.yaml at full size (4 ensembles × 90 β × 1024 starts, d = 128, its own
  chunk length). `--fig5-betas` β indices per ensemble; for each, the chunk that holds the
  middle start of that (ensemble, β) is timed before and after (`--rounds` rounds). The
  full-size estimate interpolates each ensemble's chunk time linearly over the β index and
  sums it over the ensemble's chunks; on 2 cores it halves the one-core CPU time: `run_sweep`
  on 2 local devices computes whole chunks on each, one core apiece
  (`--xla_force_host_platform_device_count=2`; weak-scaling efficiency 1.0 at 2 devices on
  this machine, docs/scaling.md).

Run it on one pinned core, single-threaded XLA (the method of issue 22):

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      taskset -c 0 env PYTHONPATH=.:benchmarks python benchmarks/bench_sweep_queue.py
    ... bench_sweep_queue.py --workload fig5 --rounds 1      # ~10 min of CPU here
"""

import argparse
import os
import time

import jax
import numpy as np
from _common import block, report, table

from transformer_flows.experiment import load_config, plan_sweep
from transformer_flows.experiment._program import _build_program, chunk_inputs

SIDES = {"vmapped solve (before)": False, "work queue (after)": True}


def cpu_call(fn, inputs):
    start = time.process_time()
    outputs = block(fn(*inputs))
    return outputs, time.process_time() - start


def measure(config, plan, shape, chunks, rounds, lanes=(), inside=False):
    """Per chunk and side: (outputs, first-call CPU s, CPU s per round). `lanes`: extra queue
    sides with that many lanes (the default side: `solve_batch`'s default)."""
    programs = {
        name: _build_program(config, shape, plan, work_queue=queue, lane_steps=True)
        for name, queue in SIDES.items()
    }
    for count in lanes:
        programs[f"work queue, {count} lanes"] = _build_program(
            config, shape, plan, lane_steps=True, lanes=count
        )
    if inside:
        programs["work queue, observed inside the loop"] = _build_program(
            config, shape, plan, lane_steps=True, observe_after=False
        )
    # The first call of each side (compile included) runs on the first chunk; every chunk is
    # then timed `rounds` times per side, interleaved.
    inputs = chunk_inputs(config, plan, shape, chunks[0])
    first = {name: cpu_call(fn, inputs)[1] for name, fn in programs.items()}
    results = {}
    for chunk in chunks:
        inputs = chunk_inputs(config, plan, shape, chunk)
        outputs, times = {}, {name: [] for name in programs}
        for _ in range(rounds):
            for name, fn in programs.items():
                outputs[name], seconds = cpu_call(fn, inputs)
                times[name].append(seconds)
        results[chunk] = {
            name: (jax.device_get(outputs[name]), first[name], times[name]) for name in programs
        }
    return results


def side_row(name, outputs, first_s, times, count):
    observed, succeeded, steps, lane_steps = outputs
    steps = np.asarray(steps)[:count]
    return [
        name,
        float(np.asarray(outputs[2]).sum() / float(lane_steps)),
        float(steps.mean()),
        int(steps.max()),
        int(np.sum(~np.asarray(succeeded)[:count])),
        min(times),
        float(np.median(times)),
        first_s,
    ]


SIDE_HEADERS = [
    "side",
    "useful share",
    "mean steps",
    "max steps",
    "failed",
    "CPU s min",
    "CPU s median",
    "first call CPU s (compile)",
]


def fig3a_config(betas: int, starts: int):
    """configs/figure3.yaml at d = 2 with `betas` × `starts` systems in one chunk."""
    return load_config(
        "configs/figure3.yaml",
        [
            "model.d=2",
            f"sweep.beta={{start: 0.1, stop: 9.0, num: {betas}}}",
            f"sweep.starts={starts}",
            f"sweep.chunk_size={betas * starts}",
        ],
    )


def fig3a(args):
    config = fig3a_config(args.betas, args.starts)
    plan = plan_sweep(config)
    (shape,) = plan.shapes
    results = measure(config, plan, shape, [0], args.rounds, args.lanes, args.inside)[0]
    count = plan.chunk_count(shape, 0)
    rows = [side_row(name, *results[name], count) for name in results]
    before, after = (results[name][0] for name in SIDES)
    frac = [np.asarray(side[0]["clustered_fraction"]) for side in (before, after)]
    counts = [np.asarray(side[0]["cluster_count"]) for side in (before, after)]
    steps = [np.asarray(side[2]) for side in (before, after)]
    cpu = [min(results[name][2]) for name in SIDES]
    body = (
        f"{count} systems ({args.betas} β × {args.starts} starts, one chunk of configs/"
        f"figure3.yaml at d = 2): n = 32, t ≤ 30, {len(plan.times)} saves, Tsit5 rtol = atol = "
        f"1e-4, float32; process CPU time of one call, {args.rounds} interleaved rounds; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; CPU affinity "
        f"{sorted(os.sched_getaffinity(0))}.\n\n"
        + table(SIDE_HEADERS, rows)
        + f"\n\nAfter vs before: CPU time ratio {cpu[0] / cpu[1]:.2f}× (min over rounds); "
        f"systems with another step count {int(np.sum(steps[0] != steps[1]))} of {count}; "
        f"max |Δ clustered fraction| {float(np.max(np.abs(frac[0] - frac[1]))):.2g}; "
        f"cluster counts that differ {int(np.sum(counts[0] != counts[1]))} of {counts[0].size}."
    )
    report("bench_sweep_queue", "Sweep programs: vmapped solve vs work queue (Fig. 3(a))", body)


def fig5(args):
    config = load_config("configs/figure5.yaml")
    plan = plan_sweep(config)
    (shape,) = plan.shapes
    weights, num_betas, starts = plan.inner_shape(shape)[:3]
    length = plan.chunk_length(shape)
    # The chunk holding the cell's middle start lies inside the cell (length < starts / 2):
    # the chunk of start 0 would also hold the previous cell's last starts, at β index 0 those
    # of the previous ensemble.
    chunk_of = {
        (w, b): ((w * num_betas + b) * starts + starts // 2) // length
        for w in range(weights)
        for b in args.fig5_betas
    }
    results = measure(config, plan, shape, sorted(set(chunk_of.values())), args.rounds)
    rows, estimate = [], dict.fromkeys(SIDES, 0.0)
    chunks_per_ensemble = num_betas * starts / length
    for w, name in enumerate(shape.weights):
        for side in SIDES:
            cpu = [min(results[chunk_of[w, b]][side][2]) for b in args.fig5_betas]
            grid = np.interp(np.arange(num_betas), args.fig5_betas, cpu)
            estimate[side] += float(grid.mean()) * chunks_per_ensemble
        for b in args.fig5_betas:
            chunk = chunk_of[w, b]
            for side in SIDES:
                row = side_row(side, *results[chunk][side], length)
                rows.append([name, f"{plan.beta[b]:g}", chunk, *row])
    before, after = (estimate[side] / 3600 for side in SIDES)
    body = (
        f"configs/figure5.yaml at full size: {plan.num_combos(shape)} systems in "
        f"{plan.num_chunks(shape)} chunks of {length}; per ensemble the chunks "
        f"of β index {args.fig5_betas} (the chunk holding the cell's middle start); process "
        f"CPU time of one chunk, {args.rounds} interleaved round(s); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"CPU affinity {sorted(os.sched_getaffinity(0))}.\n\n"
        + table(["ensemble", "β", "chunk", *SIDE_HEADERS], rows)
        + "\n\n**Full-size estimate** (chunk CPU time interpolated over β per ensemble, summed "
        f"over the {plan.num_chunks(shape)} chunks): one core {before:.2f} h before, "
        f"{after:.2f} h after ({before / after:.2f}×); on 2 cores (2 local devices, whole "
        f"chunks each, one core apiece) {before / 2:.2f} h before, **{after / 2:.2f} h after**."
    )
    report("bench_sweep_queue", "Sweep programs: vmapped solve vs work queue (Fig. 5)", body)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["fig3a", "fig5"], default="fig3a")
    parser.add_argument("--betas", type=int, default=16)
    parser.add_argument("--starts", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lanes", type=int, nargs="*", default=[])
    parser.add_argument("--inside", action="store_true", help="also: observables in the loop")
    parser.add_argument("--fig5-betas", type=int, nargs="+", default=[0, 45, 89])
    args = parser.parse_args()
    (fig3a if args.workload == "fig3a" else fig5)(args)


if __name__ == "__main__":
    main()

"""A fit config end to end with the default gradient and with the cheaper exact one.

Runs `transformer-flows fit CONFIG` once per setting and round, each in a fresh process
(compilation included, persistent compilation cache off), interleaving the settings, and
reports the process CPU time (user + system, from `wait4`) and the fit's own `train_seconds`
(wall time of the steps after the first) from metrics.json; with the first setting's
histories, the largest relative difference of the training losses between the settings. Settings:

- default: the config as written (RecursiveCheckpointAdjoint, autodiff attention);
- fast: `flow.adjoint=stored flow.stored_max_steps=K flow.attention_vjp=analytic`.

`--step-only`: instead, the CPU time of one training step of the config (`fit`'s own compiled
step, batch `train.batch_size`), both settings compiled first in this process, then blocks of
`--block` steps of each setting alternating for `--rounds` rounds (each step from the weights
after the first step, so that every block solves the same problems); reports the minimum and
median ms per step over the blocks, and the most steps a solve of 16 inputs takes there.

One core, one thread (as in BENCHMARKS.md):

    XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' \\
      taskset -c 0 python benchmarks/bench_fit_adjoint_config.py configs/fit_two_clusters.yaml \\
      --stored-max-steps 16 --rounds 3 [--smoke] [extra key=value overrides]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _run(config: str, overrides: list[str], smoke: bool, out: Path) -> dict:
    """The metrics of one `transformer-flows fit` in a fresh process (its CPU time is read by
    the caller from `os.times()`'s children fields)."""
    argv = [sys.executable, "-m", "transformer_flows.cli", "fit", config, "--out", str(out)]
    argv += ["--no-progress", "--no-cache", *(["--smoke"] if smoke else []), *overrides]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads((out / "metrics.json").read_text())


def _step_cpu(args, settings: dict) -> None:
    """Per-step CPU time of each setting (see the module docstring, `--step-only`)."""
    import equinox as eqx
    import jax

    import transformer_flows as tf
    from transformer_flows.experiment import load_config
    from transformer_flows.experiment._build import (
        build_fit_model,
        build_flow,
        build_optimizer,
        build_task,
    )

    states = {}
    for name, extra in settings.items():
        config = load_config(args.config, [*args.overrides, *extra])
        if config.precision == "float64":
            jax.config.update("jax_enable_x64", True)
        model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
        optimizer = build_optimizer(config)
        spec = tf.trainable_spec(model, config.train.parameters)
        step = tf.make_step(task, optimizer, flow, spec, config.train.batch_size)
        opt_state = optimizer.init(eqx.filter(eqx.filter(model, spec), eqx.is_inexact_array))
        model, opt_state, loss = step(model, opt_state, jax.random.key(0))  # compiles
        loss.block_until_ready()
        if name == "default":
            x0, _ = jax.vmap(task.sample)(jax.random.split(jax.random.key(0), 16))
            field = tf.as_field(model)
            taken = jax.vmap(lambda x: flow.trajectory(field, x).stats["num_steps"])(x0)
            print(f"steps per solve (16 inputs, weights after one step): max {int(taken.max())}")
        states[name] = [step, model, opt_state, []]
    for _ in range(args.rounds):
        for state in states.values():
            step, model, opt_state, times = state
            began = time.process_time()
            for i in range(args.block):  # always from the same weights: the same solves
                _, _, loss = step(model, opt_state, jax.random.key(1 + i))
            loss.block_until_ready()
            times.append((time.process_time() - began) / args.block * 1e3)
    medians = {}
    for name, (_, _, _, times) in states.items():
        medians[name] = float(np.median(times))
        print(
            f"{name}: step CPU ms min {min(times):.2f} median {medians[name]:.2f} (blocks: "
            f"{', '.join(f'{t:.2f}' for t in times)})"
        )
    print(f"default / fast (medians): {medians['default'] / medians['fast']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--stored-max-steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--step-only", action="store_true")
    parser.add_argument("--block", type=int, default=20, help="steps per timed block")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    fast = [
        "flow.adjoint=stored",
        f"flow.stored_max_steps={args.stored_max_steps}",
        "flow.attention_vjp=analytic",
    ]
    settings = {"default": [], "fast": fast}
    if args.step_only:
        _step_cpu(args, settings)
        return
    results = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name, extra in settings.items():
                out = Path(scratch) / f"{name}_{round_}"
                before = os.times()
                metrics = _run(args.config, [*args.overrides, *extra], args.smoke, out)
                after = os.times()
                cpu = (after.children_user - before.children_user) + (
                    after.children_system - before.children_system
                )
                headline = metrics["headline"]
                results[name].append(
                    {
                        "cpu_seconds": cpu,
                        "train_seconds": metrics["train_seconds"],
                        "first_step_seconds": metrics["first_step_seconds"],
                        "wall_seconds": metrics["wall_seconds"],
                        "steps": metrics["steps"],
                        "train_loss": metrics["train_loss"],
                        headline: metrics[headline],
                        "loss_history": metrics["loss_history"],
                    }
                )
                print(
                    f"round {round_} {name}: CPU {cpu:.2f} s, train (wall) "
                    f"{metrics['train_seconds']:.2f} s, first step "
                    f"{metrics['first_step_seconds']:.2f} s, {headline} {metrics[headline]}",
                    flush=True,
                )
    for name, rows in results.items():
        cpu = [row["cpu_seconds"] for row in rows]
        train = [row["train_seconds"] for row in rows]
        print(
            f"{name}: CPU min {min(cpu):.2f} median {np.median(cpu):.2f} s; train (wall) min "
            f"{min(train):.2f} median {np.median(train):.2f} s"
        )
    histories = [np.asarray(results[name][0]["loss_history"], float) for name in settings]
    difference = np.max(np.abs(histories[0] - histories[1]) / np.abs(histories[0]))
    print(f"largest relative difference of the loss histories (default vs fast): {difference:.2e}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

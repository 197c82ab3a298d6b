"""A fit config end to end with the default gradient and with the cheaper exact one.

Runs `transformer-flows fit CONFIG` once per setting and round, each in a fresh process
(compilation included, persistent compilation cache off), interleaving the settings, and
reports the process CPU time (user + system, from `wait4`) and the fit's own `train_seconds`
(wall time of the steps after the first) from metrics.json; with the first setting's
histories, the largest relative difference of the training losses between the settings. Settings:

- default: the config as written (RecursiveCheckpointAdjoint, autodiff attention);
- fast: `flow.adjoint=stored flow.stored_max_steps=K flow.attention_vjp=analytic`.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--stored-max-steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    fast = [
        "flow.adjoint=stored",
        f"flow.stored_max_steps={args.stored_max_steps}",
        "flow.attention_vjp=analytic",
    ]
    settings = {"default": [], "fast": fast}
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

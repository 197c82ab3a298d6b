"""Which solver settings can a full-size phase diagram use? Same systems, several solvers.

Runs a phase-diagram config (default configs/figure3.yaml) with a reduced number of starts
under each solver variant and compares every variant with the reference (Tsit5,
rtol = atol = 1e-6, float64) on what the figure shows, the mean clustered fraction P(t, β):

- front shift: per panel and β, |Δ| of the first time P reaches 1/2 (compare with the save
  step of the time grid);
- level shift: per panel, |Δ| of the β where P falls below 1/2 at t = 5, 10, ..., 30
  (compare with the β grid step);
- mean |ΔP| over the (t, β) grid.

Starts and weights are drawn the same way at every precision, so the differences are solver
and rounding error only, not sampling noise.

    python experiments/figure3_solver_choice.py --starts 16 --out out/figure3_solver_choice
"""

import argparse
from pathlib import Path

import jax
import numpy as np

import transformer_flows as tf
from transformer_flows.experiment import SolveFailures, level_crossing, load_config, run_sweep

VARIANTS = {
    "reference: tsit5 float64 1e-6": [
        "precision=float64",
        "solver.name=tsit5",
        "solver.rtol=1e-6",
        "solver.atol=1e-6",
    ],
    "tsit5 float64 1e-4": [
        "precision=float64",
        "solver.name=tsit5",
        "solver.rtol=1e-4",
        "solver.atol=1e-4",
    ],
    "tsit5 float32 1e-4": [
        "precision=float32",
        "solver.name=tsit5",
        "solver.rtol=1e-4",
        "solver.atol=1e-4",
    ],
    "tsit5 float32 1e-3": [
        "precision=float32",
        "solver.name=tsit5",
        "solver.rtol=1e-3",
        "solver.atol=1e-3",
    ],
    "bosh3 float32 1e-3": [
        "precision=float32",
        "solver.name=bosh3",
        "solver.rtol=1e-3",
        "solver.atol=1e-3",
    ],
    "bosh3 float32 1e-2": [
        "precision=float32",
        "solver.name=bosh3",
        "solver.rtol=1e-2",
        "solver.atol=1e-2",
    ],
    "authors' euler dt=0.1 float32": [
        "precision=float32",
        "solver.name=normalized_euler",
        "solver.dt=0.1",
    ],
}
TIMES = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


def panels(probability):
    """P(time, β) of each panel (n, d, weights, ...), in a fixed order."""
    # Every dimension but beta and time (n, d, weights, swept parameters) labels a panel.
    axes = [dim for dim in probability.dims if dim not in ("beta", "time")]
    stacked = probability.stack(panel=axes).transpose("panel", "beta", "time")
    labels = [
        ", ".join(f"{a}={v}" for a, v in zip(axes, key, strict=True))
        for key in stacked["panel"].values
    ]
    return labels, stacked.values, stacked["beta"].values, stacked["time"].values


def front_times(values, times):
    """Per (panel, β): the first time P reaches 1/2, linearly interpolated; inf if never."""
    return np.asarray(tf.first_crossing_time(times, np.moveaxis(values, -1, 0), 0.5))


def levels(values, betas, times):
    """Per (panel, t in TIMES): the β where P falls below 1/2."""
    columns = [int(np.argmin(np.abs(times - t))) for t in TIMES]
    return np.array([[level_crossing(p[:, c], betas) for c in columns] for p in values])


def shift(ours, reference):
    # Both off the grid on the same side is agreement; one off it is inf.
    with np.errstate(invalid="ignore"):
        return np.where(ours == reference, 0.0, np.abs(ours - reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/figure3.yaml"))
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("out/figure3_solver_choice"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    args = parser.parse_args()
    tf.enable_compilation_cache()
    jax.config.update("jax_enable_x64", True)

    results = {}
    for name in args.variants:
        overrides = [f"sweep.starts={args.starts}", *args.overrides, *VARIANTS[name]]
        config = load_config(args.config, overrides)
        out = args.out / name.split(":")[0].replace(" ", "_").replace("'", "")
        try:
            dataset = run_sweep(config, out, progress=True)
        except SolveFailures as failures:
            # Failed solves are masked (NaN): the table shows them as failed, not as a shift.
            print(f"{name}: {failures}")
            dataset = failures.dataset
        # Summed over the chunks, so a resumed run reports what its chunks cost.
        seconds = float(dataset.attrs["compute_seconds"])
        probability = dataset["clustered_fraction"].mean("start")
        results[name] = (
            seconds,
            panels(probability),
            int(dataset["num_steps"].max()),
            int(dataset.attrs["failed_solves"]),
        )

    reference_name = args.variants[0]
    _, (labels, reference, betas, times), _, _ = results[reference_name]
    reference_front, reference_levels = (
        front_times(reference, times),
        levels(reference, betas, times),
    )
    lines = [
        f"{args.config.stem}: {args.starts} starts x {len(betas)} β x panels {labels}; "
        f"reference = {reference_name}. Compute time: the chunks' solves, compilation included.",
        "",
        "| variant | compute time (s) | max steps | front shift in t, max / median | "
        "level shift in β, max | mean abs ΔP |",
        "|---|---|---|---|---|---|",
    ]
    for name, (seconds, (_, values, _, _), max_steps, failed) in results.items():
        fronts = shift(front_times(values, times), reference_front)
        level_shift = shift(levels(values, betas, times), reference_levels)
        lines.append(
            f"| {name} | {seconds:.1f} | {max_steps} | {fronts.max():.3g} / "
            f"{np.median(fronts):.3g} | {level_shift.max():.3g} | "
            f"{np.abs(values - reference).mean():.2g}"
            + (f" ({failed} failed solves, masked)" if failed else "")
            + " |"
        )
    lines += ["", f"grid steps: β {betas[1] - betas[0]:.3g}, t {times[1] - times[0]:.3g}"]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report + "\n")


if __name__ == "__main__":
    main()

"""Which solver settings can the full-size Fig. 3 use? Same starts, same β grid, several solvers.

Runs configs/figure3.yaml with a reduced number of starts under each solver variant and
compares every variant with the reference (Tsit5, rtol = atol = 1e-6, float64) on the quantity
the figure shows: the mean clustered fraction P(t, β), and the β where it crosses 1/2 at
t = 5, 10, ..., 30. Because the starts are common to all variants, the differences are solver
error only, not sampling noise.

    python experiments/figure3_solver_choice.py --starts 16 --out out/figure3_solver_choice
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from transformer_flows._config import load_config
from transformer_flows._summary import level_crossing
from transformer_flows._sweep import run_sweep

VARIANTS = {
    "reference: tsit5 float64 1e-6": [],
    "bosh3 float32 1e-2": ["solver.scheme=bosh3", "precision=float32", "solver.rtol=1e-2",
                           "solver.atol=1e-2"],
    "bosh3 float32 1e-3": ["solver.scheme=bosh3", "precision=float32", "solver.rtol=1e-3",
                           "solver.atol=1e-3"],
    "tsit5 float32 1e-3": ["precision=float32", "solver.rtol=1e-3", "solver.atol=1e-3"],
    "tsit5 float32 1e-4": ["precision=float32", "solver.rtol=1e-4", "solver.atol=1e-4"],
    "tsit5 float64 1e-3": ["solver.rtol=1e-3", "solver.atol=1e-3"],
    "tsit5 float64 1e-4": ["solver.rtol=1e-4", "solver.atol=1e-4"],
    "authors' euler dt=0.1 float32": ["solver.method=normalized_euler", "precision=float32"],
}
TIMES = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


def levels(probability, betas, times):
    """50% level (β) per d and time, shape (d, time)."""
    out = np.empty((probability.sizes["d"], len(times)))
    for i in range(probability.sizes["d"]):
        for j, t in enumerate(times):
            values = probability.isel(d=i).sel(time=t, method="nearest").values
            out[i, j] = level_crossing(values, betas)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/figure3.yaml"))
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("out/figure3_solver_choice"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)

    results = {}
    for name in args.variants:
        config = load_config(args.config, [f"sweep.starts={args.starts}", *VARIANTS[name]])
        out = args.out / name.split(":")[0].replace(" ", "_").replace("'", "")
        start = time.perf_counter()
        dataset = run_sweep(config, out, progress=True)
        seconds = time.perf_counter() - start
        probability = dataset["clustered_fraction"].isel(n=0, weights=0).mean("start")
        results[name] = (seconds, probability, int(dataset["num_steps"].max()))

    reference_name = args.variants[0]
    _, reference, _ = results[reference_name]
    betas = reference["beta"].values
    d_values = reference["d"].values
    reference_levels = levels(reference, betas, TIMES)
    lines = [
        f"Fig. 3 workload, {args.starts} common starts x {len(betas)} β x d = "
        f"{list(map(int, d_values))}; reference = {reference_name}.",
        "Time includes compilation (run once, possibly resumed from --out).",
        "",
        "| variant | wall time (s) | max steps | max abs ΔP over (d, t, β) | "
        "max abs Δβ of the 50% level over (d, t) |",
        "|---|---|---|---|---|",
    ]
    for name, (seconds, probability, max_steps) in results.items():
        difference = float(np.abs(probability - reference).max())
        ours = levels(probability, betas, TIMES)
        # Both off the grid on the same side counts as agreement; one off it as inf.
        with np.errstate(invalid="ignore"):
            shift = np.where(ours == reference_levels, 0.0, np.abs(ours - reference_levels))
        level_shift = float(shift.max())
        lines.append(
            f"| {name} | {seconds:.1f} | {max_steps} | {difference:.3g} | {level_shift:.3g} |"
        )
    lines += ["", f"β grid step: {betas[1] - betas[0]:.3g}"]
    report = "\n".join(lines)
    print(report)
    (args.out / "report.md").write_text(report + "\n")


if __name__ == "__main__":
    main()

"""Numbers of REPRODUCTION.md's "Normalisation placements" section, read from the dataset of
`transformer-flows run configs/normalization_placements.yaml --out DIR`:

    python experiments/normalization_placements_numbers.py DIR

Per weights ensemble, start kind and placement (median over starts): ρ(t) at a few times, the
fitted rate of log(1 − ρ) in t (Post-LN, nGPT: the derived laws are e^{−2t}, e^{−2αt}), the
fitted exponent of 1 − ρ in t (Pre-LN, Peri-LN: t^{−2}), r(t)/t and (1 − ρ)·r² at the end.
Fits use the save times where 1e-5 < 1 − ρ < 1e-2 (exponential laws) or t >= t1/2 (power
laws)."""

import sys

import numpy as np

from transformer_flows.experiment import load_dataset


def main(out: str) -> None:
    dataset, config = load_dataset(out)
    times = dataset["time"].values
    alpha = config.model.placement_params.get("alpha", 1.0)
    show = [t for t in (1.0, 2.0, 5.0, 10.0, 20.0, 30.0) if t <= times[-1]]
    index = [int(np.argmin(np.abs(times - t))) for t in show]
    print(f"times {show}; alpha = {alpha}")
    for weights in dataset["weights"].values:
        for initial in dataset["initial"].values:
            print(f"\n== weights {weights}, {initial} start")
            for placement in dataset["placement"].values:
                part = dataset.sel(weights=weights, initial=initial, placement=placement)
                part = part.isel(n=0, d=0, beta=0)
                rho = np.median(part["mean_cosine"].values, axis=0)
                radius = np.median(part["mean_radius"].values, axis=0)
                gap = 1 - rho
                line = f"{placement:8s} rho " + " ".join(f"{rho[k]:.4f}" for k in index)
                if placement in ("post_ln", "ngpt"):
                    window = (gap > 1e-5) & (gap < 1e-2)
                    if window.sum() >= 3:
                        rate = np.polyfit(times[window], np.log(gap[window]), 1)[0]
                        law = -2.0 if placement == "post_ln" else -2.0 * alpha
                        line += f" | d log(1-rho)/dt = {rate:.3f} (law {law:g}, {window.sum()} pts)"
                    else:
                        line += " | too few points with 1e-5 < 1-rho < 1e-2 for a rate"
                else:
                    window = times >= times[-1] / 2
                    exponent = np.polyfit(np.log(times[window]), np.log(gap[window]), 1)[0]
                    # In the radius the law is exact asymptotically: 1 − ρ ~ L/r².
                    in_radius = np.polyfit(np.log(radius[window]), np.log(gap[window]), 1)[0]
                    limit = gap[-1] * radius[-1] ** 2
                    line += (
                        f" | d log(1-rho)/d log t = {exponent:.3f}, / d log r = {in_radius:.3f}"
                        f" (law -2) | r/t = "
                        f"{radius[-1] / times[-1]:.3f} | (1-rho) r^2 = {limit:.3f}"
                    )
                print(line)


if __name__ == "__main__":
    main(sys.argv[1])

"""Finite-N fluctuation against finite-N bias of an attention variable (issue 19, item 3;
docs/limits_training.md, "What decays like N^{-2}").

The toy gated-attention network of the DMFT section (XOR, G = 6 gates, η = 0.002, γ = 2.5,
T = 1000). Its SGD is exactly the moment recursion started from the network's empirical moments
(`gating_moments`, tested), so a width-N draw costs one sample of its initial weights. For each N,
S independent draws give A_g,μ(T) (and the learned part A(T) − A(0)); against the DMFT's A_∞:

- fluctuation  E[(A_N − A_∞)²]   (mean over draws, gates and inputs): variance + bias², ~ N^{-1};
- squared bias (E[A_N] − A_∞)²   (unbiased: (mean − A_∞)² − var/S, then mean over gates and
  inputs): ~ N^{-2}, the square of the O(1/N) bias of a smooth function of sample means.

Slopes are log-log least squares over the widest three widths, 95% bootstrap intervals over draws.

    python experiments/limits_gate_fluctuations.py --out out/limits_gate_fluctuations  (≈ 3 CPU min)
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from transformer_flows.limits import _dmft as dm

jax.config.update("jax_enable_x64", True)


def draws(problem, width, seeds, steps, *, chunk=200):
    """A(0) and A(steps), (seeds, 2, G, P), of `seeds` width-`width` networks trained by SGD (the
    exact moment recursion from each network's empirical moments)."""

    def one(key):
        net = dm.init_gating_network(key, problem, width)
        _, a = dm.gating_dmft(problem, steps, initial=dm.gating_moments(net, problem))
        return a[jnp.array([0, steps])]

    run = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.key(width), seeds)
    return np.concatenate([np.asarray(run(keys[i : i + chunk])) for i in range(0, seeds, chunk)])


def fluctuation_and_bias(dev):
    """dev (S, ...): deviations from the N = ∞ value. Mean square, and the unbiased squared
    bias of the mean, each averaged over the trailing axes."""
    s = dev.shape[0]
    mean_square = float(np.mean(dev**2))
    bias2 = float(np.mean(dev.mean(0) ** 2 - dev.var(0, ddof=1) / s))
    return mean_square, bias2


def slope_with_interval(widths, per_width_devs, index, boots=400):
    """Slope of log(quantity `index` of fluctuation_and_bias) on log N, with a 95% bootstrap
    interval resampling the draws of every width."""
    logn = np.log(widths)
    values = [fluctuation_and_bias(d)[index] for d in per_width_devs]
    slope = float(np.polyfit(logn, np.log(values), 1)[0])
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(boots):
        vals = [
            fluctuation_and_bias(d[rng.integers(0, d.shape[0], d.shape[0])])[index]
            for d in per_width_devs
        ]
        if min(vals) > 0:
            boot.append(np.polyfit(logn, np.log(vals), 1)[0])
    return slope, [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/limits_gate_fluctuations")
    parser.add_argument("--figure", default="docs/figures/limits_gate_fluctuations.png")
    parser.add_argument("--seeds", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = dm.xor_gating_problem()
    _, a_inf = dm.gating_dmft(problem, args.steps)
    a_inf = np.asarray(a_inf)[np.array([0, args.steps])]  # (2, G, P)

    final, learned = [], []
    for width in args.widths:
        start = time.perf_counter()
        a = draws(problem, width, args.seeds, args.steps)
        final.append(a[:, 1] - a_inf[1])
        learned.append((a[:, 1] - a[:, 0]) - (a_inf[1] - a_inf[0]))
        print(
            f"N={width}: A(T) fluctuation, bias² = {fluctuation_and_bias(final[-1])}; "
            f"A(0) bias² = {fluctuation_and_bias(a[:, 0] - a_inf[0])[1]:.2g} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    results = {"settings": vars(args), "widths": args.widths}
    last3 = slice(len(args.widths) - 3, None)
    for name, devs in (("A_T", final), ("learned", learned)):
        table = [fluctuation_and_bias(d) for d in devs]
        results[name] = {
            "fluctuation": [t[0] for t in table],
            "bias2": [t[1] for t in table],
            "slope_fluctuation_last3": slope_with_interval(args.widths[last3], devs[last3], 0),
            "slope_bias2_last3": slope_with_interval(args.widths[last3], devs[last3], 1),
        }
    print(json.dumps(results, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    pathlib.Path(args.figure).with_suffix(".json").write_text(json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    n = np.asarray(args.widths, float)
    r = results["A_T"]
    ax.loglog(n, r["fluctuation"], "o-", label=r"fluctuation $E(A_N - A_\infty)^2$")
    ax.loglog(n, r["bias2"], "s-", label=r"squared bias $(E A_N - A_\infty)^2$")
    ax.loglog(n, r["fluctuation"][-1] * n[-1] / n, "k:", lw=1, label=r"$N^{-1}$")
    ax.loglog(n, r["bias2"][-1] * (n[-1] / n) ** 2, "k--", lw=1, label=r"$N^{-2}$")
    ax.set_xlabel("width N")
    ax.set_title(
        f"gated toy, gate variables A(T), T = {args.steps}, {args.seeds} draws", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=120)
    fig.savefig(out / "limits_gate_fluctuations.png", dpi=120)


if __name__ == "__main__":
    main()

"""R8 of docs/atlas.md: the selectivity threshold of one query (arXiv:2605.08505).

Mean largest attention weight E[max_j w_j] for a fixed query and n i.i.d. uniform keys on
S^{d−1} at β = c·n^{e·2/(d−1)} with e = 0.5 (sub-critical), 1 (critical), 1.5 (super-critical),
n = 10² … 10⁶, against the Poisson limit `theory.selectivity_limit(c, d)` at e = 1. Sampled with
`theory.sample_largest_weight` (float64 log-sum-exp, keys beyond β t = 60 bounded, not drawn).
Prints a markdown table with 95 % intervals, writes JSON and a PNG.

    python experiments/atlas_selectivity.py --out docs/figures/atlas_selectivity.png
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _figure_output import write_figure  # noqa: E402

from transformer_flows import theory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--log10-n", type=float, nargs="+", default=list(np.arange(2, 6.01, 0.5)))
    parser.add_argument("--trials", type=int, default=4000, help="per point at e = 1")
    parser.add_argument("--trials-off", type=int, default=1000, help="per point at e != 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/atlas_selectivity.png"))
    args = parser.parse_args()
    started = time.time()
    rows = []
    for d in args.dims:
        limit = theory.selectivity_limit(args.c, d)
        for e in (0.5, 1.0, 1.5):
            for k, log_n in enumerate(args.log10_n):
                n = int(round(10**log_n))
                beta = args.c * n ** (e * 2 / (d - 1))
                trials = args.trials if e == 1.0 else args.trials_off
                seed = args.seed + 1000 * d + 100 * int(2 * e) + k
                m = theory.sample_largest_weight(n, beta, trials, d=d, seed=seed)
                se = m.std(ddof=1) / np.sqrt(trials)
                rows.append(dict(d=d, e=e, n=n, beta=beta, trials=trials, mean=m.mean(), se=se,
                                 limit=limit if e == 1.0 else None))  # fmt: skip
                print(f"d={d} e={e} n={n:.0e} β={beta:.4g}: {m.mean():.4f} ± {1.96 * se:.4f}",
                      flush=True)  # fmt: skip
    print(f"\nwall {time.time() - started:.0f} s\n")
    print("| d | exponent of n in β | n | E[max w] (95 % CI) | Poisson limit |")
    print("|---|---|---|---|---|")
    for r in rows:
        lim = f"{r['limit']:.5f}" if r["limit"] is not None else ""
        p = r["e"] * 2 / (r["d"] - 1)
        print(f"| {r['d']} | {p:.3g} | {r['n']:.0e} | {r['mean']:.4f} ± {1.96 * r['se']:.4f} "
              f"| {lim} |")  # fmt: skip
    for d in args.dims:
        crit = [r for r in rows if r["d"] == d and r["e"] == 1.0 and r["n"] >= 10**4]
        w = np.array([1 / r["se"] ** 2 for r in crit])
        pooled = np.sum(w * [r["mean"] for r in crit]) / w.sum()
        print(f"d = {d}, n >= 1e4 pooled: {pooled:.4f} ± {1.96 / np.sqrt(w.sum()):.4f} "
              f"(limit {crit[0]['limit']:.5f})")  # fmt: skip

    fig, axes = plt.subplots(1, len(args.dims), figsize=(5.2 * len(args.dims), 4), squeeze=False)
    for ax, d in zip(axes[0], args.dims, strict=True):
        for e, colour in ((0.5, "C0"), (1.0, "C1"), (1.5, "C2")):
            rs = [r for r in rows if r["d"] == d and r["e"] == e]
            p = e * 2 / (d - 1)
            ax.errorbar([r["n"] for r in rs], [r["mean"] for r in rs],
                        yerr=[1.96 * r["se"] for r in rs], fmt="o-", ms=3, color=colour,
                        label=f"β = {args.c:g}·n^{p:.3g}")  # fmt: skip
        ax.axhline(theory.selectivity_limit(args.c, d), color="k", ls="--", lw=1,
                   label="Poisson limit")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("n (keys)")
        ax.set_ylabel("mean largest attention weight")
        ax.set_title(f"S^{d - 1}: fixed query, n uniform keys (95 % CI)")
        ax.legend(fontsize=8)
    write_figure(fig, args.out, rows)


if __name__ == "__main__":
    main()

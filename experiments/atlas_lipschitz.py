"""R10 of docs/atlas.md: attention is not globally Lipschitz (Castin, Ablin, Peyré,
arXiv:2312.14820).

One softmax attention layer f(X)_i = Σ_j softmax_j(β<x_i, A x_j>) V x_j with A = V = I, β = 1
(`tf.attend`), its local Lipschitz constant ‖Df(X)‖₂ by `tf.local_lipschitz` (power iteration on
jvp/vjp), against n on these input families:

- adversarial, growing radius: x₁ = R u, x_j = R u/2 (j ≥ 2), R² = c·log n for each c of `--cs`
  (default 4 and 8), u = e₁ (the top eigenvector of A = I); there the key-1 weight is
  p = 1/(1 + (n−1)n^{−c/4}) and the bound ‖Df‖ ≥ B = √(n−1)·(p + p(1−p)R²/4) holds, whose local
  log-log slope `bound_slope(c, n)` is derived in docs/atlas.md (½ + 1/(2 + log n) at c = 4,
  ½ + O(n^{1−c/4} log n) for c > 4);
- adversarial, fixed radius R = 3;
- random on a sphere: n i.i.d. uniform tokens on the sphere of radius 3, `--seeds` draws;
- random Gaussian: n i.i.d. N(0, I_d) tokens, `--seeds` draws (unbounded: max_j |x_j|² grows
  like 2 log n, so this family is not at a fixed radius).

Prints the table and log-log slopes with 95 % intervals (regression SE); writes JSON and a PNG.

    python experiments/atlas_lipschitz.py --out docs/figures/atlas_lipschitz.png
"""

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from _figure_output import write_figure  # noqa: E402
from scipy import stats  # noqa: E402

import transformer_flows as tf  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def layer(x):
    return tf.attend(x, jnp.asarray(1.0, x.dtype), None, None, None, normalized=True)


def adversarial(n: int, d: int, radius: float) -> jax.Array:
    x = np.zeros((n, d))
    x[:, 0] = radius / 2
    x[0, 0] = radius
    return jnp.asarray(x)


def lower_bound(n: int, radius: float) -> float:
    """√(n−1)(p + p(1−p)R²/4): the norm of the outputs j ≥ 2 moved by a unit step of x₁ along u."""
    p = 1 / (1 + (n - 1) * np.exp(-(radius**2) / 4))
    return np.sqrt(n - 1) * (p + p * (1 - p) * radius**2 / 4)


def directional_bound(n: int, radius: float) -> float:
    """|Df(X)e| for e the unit step of x₁ along u, exactly: the outputs j ≥ 2 move by
    b = p + p(1−p)R²/4 and output 1 by b₁ = p₁ + p₁(1−p₁)·3R²/4 (its own key has score R², the
    others R²/2, p₁ = 1/(1 + (n−1)e^{−R²/2})), all along u, so |Df e| = √((n−1)b² + b₁²) ≤ ‖Df‖."""
    p = 1 / (1 + (n - 1) * np.exp(-(radius**2) / 4))
    p1 = 1 / (1 + (n - 1) * np.exp(-(radius**2) / 2))
    b, b1 = p + p * (1 - p) * radius**2 / 4, p1 + p1 * (1 - p1) * 3 * radius**2 / 4
    return np.sqrt((n - 1) * b**2 + b1**2)


def growing_radius(n, c: float):
    """R = √(c log n): R² ∝ log n with constant c."""
    return np.sqrt(c * np.log(n))


def bound_slope(c: float, n):
    """d log B/d log n of the bound B(n) = `lower_bound(n, √(c log n))`, exactly (docs/atlas.md):
    with L = log n, x = (n−1)n^{−c/4}, p = 1/(1+x), q = 1 − p, e = n/(n−1) − c/4,

      ½ n/(n−1) − q e + (c/4) q (1 + L p e)/(1 + q c L/4),

    ½ + 1/(2 + L) + O(1/n) at c = 4, and ½ + q(c/2 − 1 − (c/4)(c/4 − 1)L) + O(q²L²) → ½ with
    q ≈ n^{1−c/4} for c > 4."""
    n = np.asarray(n, float)
    L = np.log(n)
    x = (n - 1) * n ** (-c / 4)
    p, q = 1 / (1 + x), x / (1 + x)
    e = n / (n - 1) - c / 4
    return 0.5 * n / (n - 1) - q * e + (c / 4) * q * (1 + L * p * e) / (1 + q * c * L / 4)


def slope(ns, values):
    fit = stats.linregress(np.log(ns), np.log(values))
    half = stats.t.ppf(0.975, len(ns) - 2) * fit.stderr
    return fit.slope, half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=5)
    parser.add_argument("--ns", type=int, nargs="+",
                        default=[4, 16, 36, 64, 100, 144, 256, 576, 1024, 2304])  # fmt: skip
    parser.add_argument("--cs", type=float, nargs="+", default=[4.0, 8.0],
                        help="constants c of the adversarial radius R² = c log n")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rows", type=Path, default=None, help="JSON rows of an earlier run")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/atlas_lipschitz.png"))
    args = parser.parse_args()
    started = time.time()
    if args.rows is not None:  # report saved rows (a run's JSON) without recomputing
        rows = json.loads(args.rows.read_text())
        args.ns = [r["n"] for r in rows]
        args.cs = [a["c"] for a in rows[0]["adversarial"]]
        return report(rows, args)
    lip = jax.jit(lambda x, key: tf.local_lipschitz(layer, x, key=key, iterations=args.iterations))
    key = jax.random.key(0)
    rows = []
    for n in args.ns:
        adv = []
        for c in args.cs:
            radius = float(growing_radius(n, c))
            adv.append(dict(c=c, R=radius, lip=float(lip(adversarial(n, args.d, radius), key)),
                            bound=float(lower_bound(n, radius)),
                            directional=float(directional_bound(n, radius))))  # fmt: skip
        row = dict(n=n, adversarial=adv, fixed=float(lip(adversarial(n, args.d, 3.0), key)))
        for name, scale in (("random", None), ("gauss", 1.0)):
            draws = []
            for s in range(args.seeds):
                z = jax.random.normal(jax.random.key(100 + s), (n, args.d))
                if scale is None:
                    z = 3.0 * z / jnp.linalg.norm(z, axis=1, keepdims=True)
                draws.append(float(lip(z, key)))
            row[name], row[name + "_sd"] = float(np.mean(draws)), float(np.std(draws, ddof=1))
        rows.append(row)
        print(row, f"{time.time() - started:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))  # partial rows
    print(f"\nwall {time.time() - started:.0f} s")
    report(rows, args)


def report(rows, args) -> None:
    print(f"d = {args.d}, A = V = I, β = 1\n")
    ns = np.array(args.ns)
    head = "".join(f" | R, c = {c:g} | ‖Df‖, c = {c:g} | bound B | ‖Df‖/B | ‖Df‖/|Df e| − 1"
                   for c in args.cs)  # fmt: skip
    print(f"| n{head} | ‖Df‖, R = 3 | ‖Df‖, uniform on radius-3 sphere | ‖Df‖, N(0, I) |")
    print("|---" * (4 + 5 * len(args.cs)) + "|")
    for r in rows:
        n = r["n"]
        cells = "".join(f" | {a['R']:.3f} | {a['lip']:.4f} | {a['bound']:.4f} | "
                        f"{a['lip'] / a['bound']:.4f} | "
                        f"{a['lip'] / directional_bound(n, a['R']) - 1:.1e}"
                        for a in r["adversarial"])  # fmt: skip
        print(f"| {r['n']}{cells} | {r['fixed']:.3f} | {r['random']:.3f} ± {r['random_sd']:.3f}"
              f" | {r['gauss']:.3f} ± {r['gauss_sd']:.3f} |")  # fmt: skip
    families = []
    for i, c in enumerate(args.cs):
        g = np.array([r["adversarial"][i]["lip"] for r in rows])
        b = np.array([r["adversarial"][i]["bound"] for r in rows])
        factor = b / np.sqrt(ns - 1)  # p + p(1−p)R²/4
        families += [(f"R² = {c:g} log n: ‖Df‖", g),
                     (f"R² = {c:g} log n: bound B", b),
                     (f"R² = {c:g} log n: ‖Df‖/(p + p(1−p)R²/4)", g / factor)]  # fmt: skip
    families += [("R = 3", np.array([r["fixed"] for r in rows])),
                 ("uniform on the radius-3 sphere", np.array([r["random"] for r in rows])),
                 ("N(0, I)", np.array([r["gauss"] for r in rows]))]  # fmt: skip
    print("\n| family | " + " | ".join(f"slope, n ≥ {lo} (95 %)" for lo in (4, 64)) + " |")
    print("|---|---|---|")
    for label, values in families:
        cells = []
        for lo in (4, 64):
            keep = ns >= lo
            s, h = slope(ns[keep], values[keep])
            cells.append(f"{s:.3f} ± {h:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for c in args.cs:
        local = ", ".join(f"{v:.3f}" for v in bound_slope(c, ns))
        print(f"local slope of the bound d log B/d log n, c = {c:g}, n = {list(ns)}: {local}")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, c in enumerate(args.cs):
        ax.loglog(ns, [r["adversarial"][i]["lip"] for r in rows], "o-",
                  label=f"adversarial, R² = {c:g} log n")  # fmt: skip
        ax.loglog(ns, [r["adversarial"][i]["bound"] for r in rows], "k:", lw=1,
                  label="bound √(n−1)(p+p(1−p)R²/4)" if i == 0 else None)  # fmt: skip
    ax.loglog(ns, [r["fixed"] for r in rows], "s-", label="adversarial, R = 3")
    ax.errorbar(
        ns,
        [r["random"] for r in rows],
        yerr=[r["random_sd"] for r in rows],
        fmt="^-",
        label="uniform on the radius-3 sphere (± sd)",
    )
    ax.errorbar(ns, [r["gauss"] for r in rows], yerr=[r["gauss_sd"] for r in rows],
                fmt="v-", label="N(0, I_d), unbounded (± sd)")  # fmt: skip
    ax.loglog(ns, np.sqrt(ns), color="grey", lw=0.8, label="√n")
    ax.set_xlabel("n (tokens)")
    ax.set_ylabel("local Lipschitz constant ‖Df(X)‖₂")
    ax.set_title(f"one attention layer, A = V = I, β = 1, d = {args.d}")
    ax.legend(fontsize=8)
    write_figure(fig, args.out, rows)


if __name__ == "__main__":
    main()

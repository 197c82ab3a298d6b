"""R10 of docs/atlas.md: attention is not globally Lipschitz (Castin, Ablin, Peyré,
arXiv:2312.14820).

One softmax attention layer f(X)_i = Σ_j softmax_j(β<x_i, A x_j>) V x_j with A = V = I, β = 1
(`tf.attend`), its local Lipschitz constant ‖Df(X)‖₂ by `tf.local_lipschitz` (power iteration on
jvp/vjp), against n on three input families:

- adversarial, growing radius: x₁ = R u, x_j = R u/2 (j ≥ 2), R = 2√(log n), u = e₁ (the top
  eigenvector of A = I); there p₁ = 1/(1 + (n−1)e^{−R²/4}) ≈ ½ and the bound
  ‖Df‖ ≥ √(n−1)·(p₁ + p₁(1−p₁)R²/4) holds (derived in docs/atlas.md);
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


def slope(ns, values):
    fit = stats.linregress(np.log(ns), np.log(values))
    half = stats.t.ppf(0.975, len(ns) - 2) * fit.stderr
    return fit.slope, half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=5)
    parser.add_argument("--ns", type=int, nargs="+",
                        default=[4, 16, 36, 64, 100, 144, 256, 576, 1024, 2304])  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rows", type=Path, default=None, help="JSON rows of an earlier run")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/atlas_lipschitz.png"))
    args = parser.parse_args()
    started = time.time()
    if args.rows is not None:  # report saved rows (a run's JSON) without recomputing
        rows = json.loads(args.rows.read_text())
        args.ns = [r["n"] for r in rows]
        return report(rows, args)
    lip = jax.jit(lambda x, key: tf.local_lipschitz(layer, x, key=key, iterations=args.iterations))
    key = jax.random.key(0)
    rows = []
    for n in args.ns:
        grow = 2 * np.sqrt(np.log(n))
        row = dict(n=n, R_grow=grow,
                   grow=float(lip(adversarial(n, args.d, grow), key)),
                   bound=lower_bound(n, grow),
                   fixed=float(lip(adversarial(n, args.d, 3.0), key)))  # fmt: skip
        for name, scale in (("random", None), ("gauss", 1.0)):
            draws = []
            for s in range(args.seeds):
                z = jax.random.normal(jax.random.key(100 + s), (n, args.d))
                if scale is None:
                    z = 3.0 * z / jnp.linalg.norm(z, axis=1, keepdims=True)
                draws.append(float(lip(z, key)))
            row[name], row[name + "_sd"] = float(np.mean(draws)), float(np.std(draws, ddof=1))
        rows.append(row)
        print(row, flush=True)
    print(f"\nwall {time.time() - started:.0f} s")
    report(rows, args)


def report(rows, args) -> None:
    print(f"d = {args.d}, A = V = I, β = 1\n")
    print("| n | R = 2√(log n) | ‖Df‖, R = 2√(log n) | bound √(n−1)(p+p(1−p)R²/4) "
          "| ‖Df‖, R = 3 | ‖Df‖, uniform on radius-3 sphere | ‖Df‖, N(0, I) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['R_grow']:.3f} | {r['grow']:.3f} | {r['bound']:.3f} | "
              f"{r['fixed']:.3f} | {r['random']:.3f} ± {r['random_sd']:.3f} | "
              f"{r['gauss']:.3f} ± {r['gauss_sd']:.3f} |")  # fmt: skip
    ns = np.array(args.ns)
    g = np.array([r["grow"] for r in rows])
    factor = np.array([r["bound"] / np.sqrt(r["n"] - 1) for r in rows])
    for label, values in (
        ("R = 2√(log n): ‖Df‖", g),
        ("R = 2√(log n): ‖Df‖ / (p + p(1−p)R²/4)", g / factor),
        ("R = 3", np.array([r["fixed"] for r in rows])),
        ("uniform on the radius-3 sphere", np.array([r["random"] for r in rows])),
        ("N(0, I)", np.array([r["gauss"] for r in rows])),
    ):
        for lo in (4, 64):
            keep = ns >= lo
            s, h = slope(ns[keep], values[keep])
            print(f"slope of log {label} vs log n, n >= {lo}: {s:.3f} ± {h:.3f}")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(ns, g, "o-", label="adversarial, R = 2√(log n)")
    ax.loglog(ns, [r["bound"] for r in rows], "k:", label="bound √(n−1)(p+p(1−p)R²/4)")
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
    ax.loglog(ns, np.sqrt(ns) * g[-1] / np.sqrt(ns[-1]), color="grey", lw=0.8, label="∝ √n")
    ax.set_xlabel("n (tokens)")
    ax.set_ylabel("local Lipschitz constant ‖Df(X)‖₂")
    ax.set_title(f"one attention layer, A = V = I, β = 1, d = {args.d}")
    ax.legend(fontsize=8)
    write_figure(fig, args.out, rows)


if __name__ == "__main__":
    main()

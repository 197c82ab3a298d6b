"""R12 of docs/atlas.md: token sample complexity of attention (Bohbot, Letrouit, Peyré, Vialard,
arXiv:2512.10656) against the Gaussian closed form.

n i.i.d. tokens y_j ~ N(m, Σ) in R^d. The empirical attention map Γ_n(x) = Σ_j softmax_j(
β<Qx, Ky_j>) V y_j (`tf.attend` with the tokens as keys) tends to its mean-field limit, which
for a Gaussian law is the affine map Γ(x) = V(m + βΣKᵀQx) (the velocity that
`theory.gaussian_moments` integrates; docs/models.md, "No normalisation"). Measured:

- map error: max over probe points x with |x| <= R (the centre, and 64 fixed directions at
  radii R/2 and R) of |Γ_n(x) − Γ(x)|, mean over `--seeds` draws, for R in `--radii`;
- flow error: the n tokens moved by `tf.NoNorm(tf.SelfAttention(β, Q, K, V))` (`tf.solve`,
  RK4, h = 0.05) to t = T; |empirical mean(T) − m(T)| with m(T) from
  `theory.gaussian_moments(m, Σ, β, [0, T])` started at the true (not the empirical) moments.

Slopes of log error vs log n with 95 % intervals (regression over n of the seed means, and a
bootstrap over seeds). Writes JSON and a PNG.

    python experiments/atlas_sample_complexity.py --out docs/figures/atlas_sample_complexity.png
"""

import argparse
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
from transformer_flows import theory  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

D, BETA = 3, 1.0
M0 = np.array([0.5, -0.2, 0.1])
SIGMA0 = np.array([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]])


def weights():
    rng = np.random.default_rng(1)
    Q, K = (np.eye(D) + 0.3 * rng.standard_normal((D, D)) for _ in range(2))
    V = 0.5 * np.eye(D) + 0.3 * rng.standard_normal((D, D))
    return Q, K, V


def probes(radius: float) -> np.ndarray:
    rng = np.random.default_rng(2)
    u = rng.standard_normal((64, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, D)), radius / 2 * u, radius * u])


def limit_map(x, Q, K, V):
    """Γ(x) = V(m + βΣKᵀQx) for tokens N(m, Σ)."""
    return (M0 + BETA * x @ (SIGMA0 @ K.T @ Q).T) @ V.T


def tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return M0 + rng.standard_normal((n, D)) @ np.linalg.cholesky(SIGMA0).T


def fit(ns, errors):
    """Slope of log mean error vs log n: regression 95 % CI and a seed-bootstrap 95 % CI."""
    errors = np.asarray(errors)  # (n, seeds)
    res = stats.linregress(np.log(ns), np.log(errors.mean(axis=1)))
    half = stats.t.ppf(0.975, len(ns) - 2) * res.stderr
    rng = np.random.default_rng(3)
    boot = []
    for _ in range(1000):
        pick = rng.integers(0, errors.shape[1], errors.shape[1])
        boot.append(np.polyfit(np.log(ns), np.log(errors[:, pick].mean(axis=1)), 1)[0])
    return res.slope, half, np.percentile(boot, [2.5, 97.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[2**k for k in range(7, 18)])
    parser.add_argument("--flow-ns", type=int, nargs="+", default=[2**k for k in range(6, 13)])
    parser.add_argument("--radii", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--T", type=float, default=0.5)
    default_out = Path("docs/figures/atlas_sample_complexity.png")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    started = time.time()
    Q, K, V = weights()
    beta = jnp.asarray(BETA)
    Qj, Kj, Vj = (jnp.asarray(w)[None] for w in (Q, K, V))  # one head
    gamma_n = jax.jit(lambda x, y: tf.attend(x, beta, Qj, Kj, Vj, normalized=True, keys=y))
    out = {"map": {}, "flow": {}}
    for radius in args.radii:
        x = probes(radius)
        exact = limit_map(x, Q, K, V)
        errors = [
            [float(np.linalg.norm(gamma_n(x, tokens(n, s)) - exact, axis=1).max())
             for s in range(args.seeds)]
            for n in args.ns
        ]  # fmt: skip
        out["map"][radius] = errors
        slope, half, boot = fit(args.ns, errors)
        print(f"map error, R = {radius:g}: slope {slope:.3f} ± {half:.3f} (bootstrap "
              f"{boot[0]:.3f} to {boot[1]:.3f})", flush=True)  # fmt: skip
    field = tf.NoNorm(tf.SelfAttention(BETA, Q, K, V))
    m_T, _ = theory.gaussian_moments(M0, SIGMA0, BETA, [0.0, args.T], Q=Q, K=K, V=V)
    flow = []
    for n in args.flow_ns:
        row = []
        for s in range(args.seeds):
            xs = tf.solve(field, tokens(n, 10_000 + s), np.array([0.0, args.T]),
                          solver=tf.RK4(), dt0=0.05).xs  # fmt: skip
            row.append(float(np.linalg.norm(np.asarray(xs[-1]).mean(axis=0) - m_T[-1])))
        flow.append(row)
        print(f"flow n = {n}: {np.mean(row):.4g}", flush=True)
    out["flow"] = flow
    slope, half, boot = fit(args.flow_ns, flow)
    print(f"flow error (mean at T = {args.T:g}): slope {slope:.3f} ± {half:.3f} (bootstrap "
          f"{boot[0]:.3f} to {boot[1]:.3f})")  # fmt: skip
    print(f"wall {time.time() - started:.0f} s")
    print("\n| n | " + " | ".join(f"map error, R = {r:g}" for r in args.radii) + " |")
    print("|---|" + "---|" * len(args.radii))
    for i, n in enumerate(args.ns):
        cells = []
        for r in args.radii:
            e = np.asarray(out["map"][r][i])
            cells.append(f"{e.mean():.4g} ± {1.96 * e.std(ddof=1) / np.sqrt(len(e)):.2g}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in args.radii:
        e = np.asarray(out["map"][r])
        ax.errorbar(args.ns, e.mean(1), yerr=1.96 * e.std(1, ddof=1) / np.sqrt(e.shape[1]),
                    fmt="o-", ms=3, label=f"map error, max over |x| ≤ {r:g}")  # fmt: skip
    e = np.asarray(flow)
    ax.errorbar(args.flow_ns, e.mean(1), yerr=1.96 * e.std(1, ddof=1) / np.sqrt(e.shape[1]),
                fmt="s-", ms=3, label=f"flow: |mean(T) − m(T)|, T = {args.T:g}")  # fmt: skip
    ns = np.asarray(args.ns, float)
    ax.loglog(ns, np.asarray(out["map"][args.radii[0]]).mean(1)[0] * np.sqrt(ns[0] / ns),
              color="grey", lw=0.8, label="∝ n^(−1/2)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (tokens)")
    ax.set_ylabel("error against the Gaussian mean-field limit")
    ax.set_title(f"n i.i.d. N(m, Σ) tokens, d = {D}, β = {BETA:g}, random Q, K, V (95 % CI)")
    ax.legend(fontsize=8)
    out["ns"], out["flow_ns"] = args.ns, args.flow_ns
    write_figure(fig, args.out, out)


if __name__ == "__main__":
    main()

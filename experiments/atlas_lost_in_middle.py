"""R9 of docs/atlas.md: lost in the middle (Duerinckx, Geshkovski, Rossi, arXiv:2605.09213).

The authors' causal ALiBi dynamics on the circle, θ̇_j = β Σ_{k<j} w_jk e^{β cos(θ_j−θ_k)}
sin(θ_k − θ_j), w_jk = e^{−λ(j−k)/N}/Σ_{l<j} e^{−λ(j−l)/N}, solved by `tf.solve` (RK4) as the
library's `UnnormalizedSelfAttention(β, causal=True, alibi=λ)` on (S¹)^N (weights
e^{β cos − λ(j−k)/N}/j, self term sin 0 = 0) times the per-token rate β·j/Σ_{l<j} e^{−λ(j−l)/N}
(`TokenRates`; equal to the authors' right-hand side to rounding, tested).

Retrieval of source token j by the last token N at time t: the soft-accuracy mode sum
R_t(j) = N Σ_k ω_{k,M} E[cos k(θ_N(t) − θ_j(0))] (i.i.d. uniform θ(0)), whose kinetic limit is
`theory.retrieval_profile(s = j/N)`. Estimated with far less variance through the exact identity
(integrate by parts in θ_j(0), uniform): E[cos k(θ_N(t) − θ_j(0))] =
E[∂θ_N(t)/∂θ_j(0) · cos k(θ_N(t) − θ_j(0))], the sensitivities by `jax.jacrev` through the solve.

    python experiments/atlas_lost_in_middle.py --out docs/figures/atlas_lost_in_middle.png
"""

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from _figure_output import write_figure  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows import theory  # noqa: E402
from transformer_flows._field._base import AbstractSphereField  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class TokenRates(AbstractSphereField):
    """ẋ_i = r_i · field(x)_i: a fixed rate per token (a time change per token)."""

    field: AbstractSphereField
    rates: jax.Array

    def drift(self, t, x, args):
        return self.rates[:, None].astype(x.dtype) * self.field.drift(t, x, args)

    def jump_times(self):
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)


def authors_field(n: int, beta: float, lam: float) -> TokenRates:
    j = np.arange(1, n + 1)  # 1-based position; token j sees itself and j − 1 predecessors
    z = np.array([np.exp(-lam * np.arange(1, i) / n).sum() for i in j])  # Σ_{l<j} e^{−λ(j−l)/n}
    rates = np.where(j > 1, beta * j / np.where(z > 0, z, 1.0), 0.0)
    usa = tf.UnnormalizedSelfAttention(beta, causal=True, alibi=lam)
    return TokenRates(usa, jnp.asarray(rates))


def authors_velocity(theta: np.ndarray, beta: float, lam: float) -> np.ndarray:
    """The authors' right-hand side in numpy (their `force`, restated)."""
    n = theta.size
    out = np.zeros(n)
    for j in range(1, n):
        w = np.exp(-(lam / n) * (j - np.arange(j)))
        diff = theta[j] - theta[:j]
        out[j] = np.dot(w / w.sum(), -beta * np.sin(diff) * np.exp(beta * np.cos(diff)))
    return out


def chain_profile(n: int, t: float, beta: float, lam: float, M: float, k_max: int) -> np.ndarray:
    """The same linearisation at finite N (no continuum limit): N Σ_k ω_k [e^{a_k t W} − I]_{N,j}
    with W the ALiBi weight matrix; tends to `theory.retrieval_profile` as N → ∞."""
    from scipy.linalg import expm
    from scipy.special import iv

    W = np.zeros((n, n))
    for j in range(1, n):
        w = np.exp(-lam * (j - np.arange(j)) / n)
        W[j, :j] = w / w.sum()
    total = np.zeros(n - 1)
    for k in range(1, k_max + 1):
        a = k**2 * iv(k, beta)
        total += np.exp(-0.5 * (np.pi * k / M) ** 2) * n * (expm(a * t * W) - np.eye(n))[-1, :-1]
    return total


def retrieval_terms(n, beta, lam, ts, dt, M, k_max):
    """Two unbiased per-start forms of N Σ_k ω_k E cos k(θ_N(t) − θ_j(0)) (each (T, n) from θ(0)):
    `direct` = N Σ_k ω_k cos k(θ_N(t) − θ_j(0)) and `by_parts` = the same times ∂θ_N(t)/∂θ_j(0).
    Their averages over a uniform θ_j(0), all other angles fixed, are equal (integration by
    parts on the circle); `by_parts` has a per-start spread O(1) instead of O(N)."""
    field = authors_field(n, beta, lam)
    ts = jnp.asarray(ts)
    k = np.arange(1.0, k_max + 1.0)
    omega = jnp.asarray(np.exp(-0.5 * (np.pi * k / M) ** 2))
    k = jnp.asarray(k)[:, None, None]

    def last_angle(theta0):
        x = tf.solve(field, tf.angles_to_points(theta0), ts, solver=tf.RK4(), dt0=dt).xs
        return tf.points_to_angles(x[:, -1])  # (T,)

    def weighted(theta0, factor):
        phase = jnp.cos(k * (last_angle(theta0)[None, :, None] - theta0[None, None, :]))
        return n * jnp.einsum("k,ktn->tn", omega, phase * factor[None])  # (T, n)

    def direct(theta0):
        return weighted(theta0, jnp.ones((ts.size, n), theta0.dtype))

    def by_parts(theta0):
        return weighted(theta0, jax.jacrev(last_angle)(theta0))  # ∂θ_N(t)/∂θ_j(0): (T, n)

    return direct, by_parts


def make_estimator(n, beta, lam, ts, dt, M, k_max):
    """`by_parts` of `retrieval_terms` at i.i.d. uniform θ(0) drawn from each key (vmapped)."""
    _, by_parts = retrieval_terms(n, beta, lam, ts, dt, M, k_max)

    def one(key):
        return by_parts(jax.random.uniform(key, (n,), minval=0.0, maxval=2 * jnp.pi))

    return eqx.filter_jit(jax.vmap(one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--M", type=float, default=8.0)
    parser.add_argument("--k-max", type=int, default=6)
    parser.add_argument("--ts", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--dt", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--report-only", action="store_true", help="report the saved draws")
    parser.add_argument(
        "--gap-ns",
        type=int,
        nargs="+",
        default=None,
        help="instead of the profile: the particles' gap to the closed form "
        "against N (band averages), e.g. --gap-ns 64 128 256",
    )
    parser.add_argument("--gap-samples", type=int, nargs="+", default=[1024, 384, 96],
                        help="starts per N of --gap-ns")  # fmt: skip
    parser.add_argument("--gap-seed", type=int, default=0, help="draws of --gap-ns runs")
    parser.add_argument("--gap-report", type=Path, nargs="+", default=None,
                        help="pool and report the JSONs of --gap-ns runs")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/figures/atlas_lost_in_middle.png"))
    args = parser.parse_args()
    started = time.time()
    if args.gap_report is not None:
        rows = sum((json.loads(path.read_text()) for path in args.gap_report), [])
        return write_gap_figure(gap_report(rows), args)
    if args.gap_ns is not None:
        return gap_main(args)
    # Draws are saved after every batch (`--draws`), so a stopped run can still be reported
    # (`--report-only`) on the samples it has.
    draws_path = args.out.with_suffix(".draws.npy")
    if args.report_only:
        draws = np.load(draws_path)
    else:
        est = make_estimator(
            args.n, args.beta, args.lam, [0.0, *args.ts], args.dt, args.M, args.k_max
        )
        keys = jax.random.split(jax.random.key(0), args.samples)
        parts = []
        for i in range(0, args.samples, args.batch):
            parts.append(np.asarray(est(keys[i : i + args.batch]))[:, 1:, :])
            draws = np.concatenate(parts)  # (samples, T, n), t > 0
            draws_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(draws_path, draws)
            print(f"{len(draws)} samples, {time.time() - started:.0f} s", flush=True)
    args.samples = len(draws)
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(args.samples)
    s = np.arange(1, args.n) / args.n  # sources j = 1 … N−1 (1-based)
    t_crit = theory.retrieval_t_crit(args.beta, args.lam, M=args.M)
    print(f"wall {time.time() - started:.0f} s; t_crit (closed form, M = {args.M:g}) = "
          f"{t_crit:.4f}")  # fmt: skip
    fine = np.linspace(0.5 / args.n, 1 - 0.5 / args.n, 2000)
    rows = []
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, t in enumerate(args.ts):
        measured = mean[i, :-1]
        closed = theory.retrieval_profile(s, t, args.beta, args.lam, M=args.M)
        # Minimum position: vertex of a quadratic fitted around the measured minimum (±6 sources).
        j0 = int(np.argmin(measured))
        lo, hi = max(0, j0 - 6), min(len(s), j0 + 7)
        c2, c1, _ = np.polyfit(s[lo:hi], measured[lo:hi], 2, w=1 / se[i, lo:hi])
        s_min = -c1 / (2 * c2) if c2 > 0 else float("nan")
        theory_min = fine[np.argmin(theory.retrieval_profile(fine, t, args.beta, args.lam))]
        chain = chain_profile(args.n, t, args.beta, args.lam, args.M, 20)
        rows.append(dict(t=t, s_min=s_min, s_min_grid=s[j0], theory_s_min=theory_min,
                         chain_s_min=float(s[np.argmin(chain)]), chain=chain.tolist(),
                         right_slope=float(np.polyfit(s[-8:], measured[-8:], 1)[0]),
                         right_slope_se=float(np.sqrt(np.sum(
                             (se[i, -9:-1] * (s[-8:] - s[-8:].mean())) ** 2))
                             / np.sum((s[-8:] - s[-8:].mean()) ** 2)),
                         measured=measured.tolist(), se=se[i, :-1].tolist(),
                         closed=closed.tolist()))  # fmt: skip
        print(f"t = {t:g}: measured minimum s = {s_min:.4f} (grid {s[j0]:.4f}), closed form "
              f"{theory_min:.4f}, finite-N chain {s[np.argmin(chain)]:.4f}; right-end slope "
              f"{rows[-1]['right_slope']:.3f} ± {1.96 * rows[-1]['right_slope_se']:.3f}; "
              f"{np.mean(np.abs(measured - closed) <= 1.96 * se[i, :-1]):.0%} of sources within "
              f"the 95 % interval of the closed form; max |measured − closed| / closed = "
              f"{np.max(np.abs(measured - closed) / closed):.3f}")  # fmt: skip
        line = ax.errorbar(s, measured, yerr=1.96 * se[i, :-1], fmt="o", ms=2.5,
                           label=f"t = {t:g}, N = {args.n} (95 % CI)")  # fmt: skip
        ax.plot(fine, theory.retrieval_profile(fine, t, args.beta, args.lam, M=args.M),
                color=line[0].get_color(), lw=1)  # fmt: skip
    # t_crit measured: where the right-end slope (fit over the last 8 sources) crosses 0,
    # linear between the two times around the crossing; the same for the finite-N chain.
    slopes = np.array([r["right_slope"] for r in rows])
    slope_se = np.array([r["right_slope_se"] for r in rows])
    chain_slopes = np.array([np.polyfit(s[-8:], np.asarray(r["chain"])[-8:], 1)[0] for r in rows])
    for label, values in (("measured", slopes), ("finite-N chain", chain_slopes)):
        cross = np.flatnonzero((values[:-1] > 0) & (values[1:] <= 0))
        if cross.size:
            i = cross[0]
            t0, t1 = args.ts[i], args.ts[i + 1]
            est = t0 + (t1 - t0) * values[i] / (values[i] - values[i + 1])
            print(f"t_crit {label}: {est:.3f} (right-end slope {values[i]:.3f} at t = {t0:g}, "
                  f"{values[i + 1]:.3f} at t = {t1:g}) against {t_crit:.4f}")  # fmt: skip
            if label == "measured":
                print(f"  (slopes' 95 % intervals: ±{1.96 * slope_se[i]:.3f}, "
                      f"±{1.96 * slope_se[i + 1]:.3f})")  # fmt: skip
        else:
            print(f"t_crit {label}: the right-end slope does not change sign over {args.ts}")
    ax.set_ylim(0, None)
    ax.set_xlabel("source position s = j/N")
    ax.set_ylabel("retrieval N Σ_k ω_k E cos k(θ_N(t) − θ_j(0))")
    ax.set_title(f"causal ALiBi on the circle, β = {args.beta:g}, λ = {args.lam:g}, M = {args.M:g}"
                 f" (lines: kinetic limit)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    write_figure(fig, args.out, dict(t_crit=t_crit, rows=rows))


BANDS = ((0.125, 0.375), (0.375, 0.625), (0.625, 0.875), (0.125, 0.875))


def gap_main(args) -> None:
    """The particles' profile against the closed form and the finite-N linear chain, averaged
    over source bands s ∈ BANDS (the last one pools the others), for each N of `--gap-ns` (the
    kinetic limit says the ratio particles/closed form → 1 as N → ∞ at fixed t). Each start's
    band average is one sample, so the 95 % intervals are over independent starts; the per-start
    values are kept in the JSON so that runs with other `--gap-seed`s can be pooled
    (`--gap-report`)."""
    rows = []
    for n, samples in zip(args.gap_ns, args.gap_samples, strict=False):
        begun = time.time()
        est = make_estimator(n, args.beta, args.lam, [0.0, *args.ts], args.dt, args.M, args.k_max)
        keys = jax.random.split(jax.random.key(n + 100_000 * args.gap_seed), samples)
        draws = np.concatenate([np.asarray(est(keys[i : i + args.batch]))[:, 1:, :-1]
                                for i in range(0, samples, args.batch)])  # fmt: skip
        s = np.arange(1, n) / n
        for i, t in enumerate(args.ts):
            closed = theory.retrieval_profile(s, t, args.beta, args.lam, M=args.M)
            chain = chain_profile(n, t, args.beta, args.lam, args.M, 20)
            for lo, hi in BANDS:
                keep = (s > lo) & (s <= hi)
                rows.append(dict(n=n, t=t, band=[lo, hi], closed=closed[keep].mean(),
                                 chain=chain[keep].mean(), seed=args.gap_seed,
                                 per_start=draws[:, i, keep].mean(1).tolist()))  # fmt: skip
        print(f"N = {n}: {samples} starts, {time.time() - begun:.0f} s", flush=True)
        out = args.out.with_name(f"{args.out.stem}_gap_seed{args.gap_seed}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    gap_report(rows)


def gap_report(rows) -> list[dict]:
    """Pool the per-start values of equal (N, t, band) and print particles/closed form and
    particles/chain with 95 % intervals over starts."""
    pooled = {}
    for r in rows:
        key = (r["n"], r["t"], tuple(r["band"]))
        pooled.setdefault(key, dict(r, per_start=[]))["per_start"] += r["per_start"]
    table = []
    print("| N | t | sources s | starts | particles | linear chain | closed form | "
          "particles/closed (95 %) | particles/chain (95 %) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (n, t, (lo, hi)), r in sorted(pooled.items()):
        x = np.asarray(r["per_start"])
        mean, half = x.mean(), 1.96 * x.std(ddof=1) / np.sqrt(x.size)
        c, ch = r["closed"], r["chain"]
        table.append(dict(n=n, t=t, band=[lo, hi], starts=x.size, measured=mean, half=half,
                          closed=c, chain=ch))  # fmt: skip
        print(f"| {n} | {t:g} | ({lo}, {hi}] | {x.size} | {mean:.3f} ± {half:.3f} | {ch:.3f} | "
              f"{c:.3f} | {mean / c:.3f} ± {half / c:.3f} | "
              f"{mean / ch:.3f} ± {half / ch:.3f} |")  # fmt: skip
    # The kinetic limit's finite-N correction: is the gap 1 − particles/chain ∝ 1/N? N·gap per N,
    # and the exponent α of gap = C N^{−α} by weighted least squares on log gap (delta method).
    for t in sorted({r["t"] for r in table}):
        rows = [r for r in table if r["t"] == t and r["band"] == [0.125, 0.875]]
        ns = np.array([r["n"] for r in rows], float)
        gap = np.array([1 - r["measured"] / r["chain"] for r in rows])
        half = np.array([r["half"] / r["chain"] for r in rows])
        cells = ", ".join(
            f"N = {n:g}: {n * g:.1f} ± {n * h:.1f}" for n, g, h in zip(ns, gap, half, strict=True)
        )
        print(f"t = {t:g}: N·(1 − particles/chain) = {cells}")
        if len(ns) > 2 and np.all(gap > 0):
            w = (gap / (half / 1.96)) ** 2  # 1/var of log gap
            X = np.stack([np.ones_like(ns), -np.log(ns)], 1)
            cov = np.linalg.inv(X.T @ (w[:, None] * X))
            alpha = (cov @ X.T @ (w * np.log(gap)))[1]
            print(f"t = {t:g}: gap ∝ N^(−α), α = {alpha:.2f} ± {1.96 * np.sqrt(cov[1, 1]):.2f}")
    return table


def write_gap_figure(table, args) -> None:
    """N·(1 − particles/chain) (all sources s ∈ (1/8, 7/8]) against N: flat if the gap ∝ 1/N."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for t in sorted({r["t"] for r in table}):
        rows = [r for r in table if r["t"] == t and r["band"] == [0.125, 0.875]]
        ns = np.array([r["n"] for r in rows])
        gap = np.array([1 - r["measured"] / r["chain"] for r in rows])
        half = np.array([r["half"] / r["chain"] for r in rows])
        line = ax.errorbar(ns, ns * gap, yerr=ns * half, fmt="o-", capsize=3,
                           label=f"t = {t:g} (95 %)")  # fmt: skip
        ax.axhline(ns[0] * gap[0], ls=":", lw=1, color=line[0].get_color())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (tokens)")
    ax.set_ylabel("N · (1 − particles / linear chain), s ∈ (1/8, 7/8]")
    ax.set_title(f"R9: gap to the kinetic limit × N (flat: gap ∝ 1/N), β = {args.beta:g}, "
                 f"λ = {args.lam:g}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    write_figure(fig, args.out.with_name(args.out.stem + "_gap.png"), table)


if __name__ == "__main__":
    main()

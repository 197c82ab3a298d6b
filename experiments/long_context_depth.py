"""The depth question of long context: how long does the flow take to cluster at β = γ log n?

(SA) with Q = K = V = I and no mask (every query attends to all n keys, so β_n = γ log n is
one number per n). For each n and γ:

- random starts: n i.i.d. uniform tokens on S^{d-1}, `--seeds` draws; the clustering time is
  the first time the mean pairwise cosine (|Σ x_i|² - n)/(n(n-1)) reaches `--level`
  (default 0.9), linearly interpolated between saves every `--dt-save`; seeds that have not
  reached it by `--t1` are counted as censored;
- equiangular prediction: Theorem 6.8's ODE (6.9) with β = γ log n from orthonormal tokens,
  whose common cosine is the mean cosine, reaching `level` at
  `theory.clustering_time(n, γ log n, 1 - level, "SA")`;
- a check of that prediction by particles from orthonormal tokens (d = n) for n <= `--check-max-n`.

Prints a markdown table (mean and 95 % t-interval over seeds) and writes it with the raw
times to `--out` (JSON).

    python experiments/long_context_depth.py --d 32 --ns 16 32 64 128 256 512 \
        --gammas 0.5 1.0 1.5 --seeds 8 --t1 200 --out out/long_context_depth.json
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import transformer_flows as tf
from transformer_flows import theory


def mean_cosine(x):
    """Mean of <x_i, x_j> over i ≠ j, in O(nd)."""
    n = x.shape[0]
    total = jnp.sum(x, axis=0)
    return (total @ total - n) / (n * (n - 1))


@eqx.filter_jit
def crossing_times(x0s, beta, ts, level, rtol, atol):
    """Clustering time (mean cosine reaching `level`) of each start in the batch `x0s`."""

    def one(x0):
        trajectory = tf.solve(
            tf.SelfAttention(beta),
            x0,
            ts,
            rtol=rtol,
            atol=atol,
            observe=mean_cosine,
            max_steps=65_536,
            throw=False,
        )
        times = tf.first_crossing_time(ts, trajectory.observed, level)
        return jnp.where(trajectory.succeeded, times, jnp.nan)

    return jax.lax.map(one, x0s)


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan")
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values)
    return mean, float(half)


def median_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """Median and the distribution-free order-statistic interval [x_(k), x_(m+1-k)] for it,
    with the largest k whose coverage 1 - 2 P(Bin(m, 1/2) < k) is >= 0.9 (censored times
    are +inf and sort last, so the interval stays valid under censoring). Returns (median,
    low, high, coverage)."""
    ordered = np.sort(values)
    m = len(ordered)
    k = 1
    while k + 1 <= m // 2 and 1 - 2 * stats.binom.cdf(k, m, 0.5) >= 0.9:
        k += 1
    coverage = 1 - 2 * stats.binom.cdf(k - 1, m, 0.5)
    return float(np.median(ordered)), float(ordered[k - 1]), float(ordered[m - k]), coverage


def summarize(rows: list[dict]) -> None:
    """The markdown table of REPRODUCTION.md and, per γ without censoring, the OLS slope of
    t* against ln n over all seeds (95 % t-interval) beside the ODE's."""
    print("| γ | n | β = γ log n | mean t* (95 % t-CI) | median t* [CI] | ODE (6.9) | censored |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        times = np.asarray(row["times"], dtype=float)
        median, low, high, coverage = median_interval(times)
        mean = f"{row['mean']:.2f} ± {row['half_width']:.2f}" if row["censored"] == 0 else "—"
        limit = row.get("t1", float("nan"))
        shown = [f"{v:.1f}" if np.isfinite(v) else f"> {limit:g}" for v in (low, high)]
        middle = f"{median:.2f}" if np.isfinite(median) else f"> {limit:g}"
        print(
            f"| {row['gamma']:g} | {row['n']} | {row['beta']:.2f} | {mean} | {middle} "
            f"[{shown[0]}, {shown[1]}] | {row['ode']:.2f} | {row['censored']}/{len(times)} |"
        )
    print(f"(median intervals: order statistics, coverage >= {coverage:.3f})")
    for gamma in sorted({row["gamma"] for row in rows}):
        part = [row for row in rows if row["gamma"] == gamma]
        if any(row["censored"] or row["failed"] for row in part):
            continue
        x = np.concatenate([np.full(len(row["times"]), np.log(row["n"])) for row in part])
        y = np.concatenate([row["times"] for row in part])
        fit = stats.linregress(x, y)
        half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
        ode = stats.linregress([np.log(r["n"]) for r in part], [r["ode"] for r in part])
        print(
            f"γ = {gamma:g}: dt*/d ln n = {fit.slope:.3f} ± {half:.3f} (random starts, "
            f"n = {part[0]['n']}..{part[-1]['n']}); ODE {ode.slope:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--ns", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--t1", type=float, default=200.0)
    parser.add_argument("--dt-save", type=float, default=0.05)
    parser.add_argument("--tol", type=float, default=1e-6, help="rtol = atol of Tsit5")
    parser.add_argument("--check-max-n", type=int, default=64)
    parser.add_argument("--float32", action="store_true", help="solve in float32")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--summarize", type=Path, nargs="+", default=None, help="only tabulate these --out files"
    )
    args = parser.parse_args()
    if args.summarize:
        summarize([row for path in args.summarize for row in json.loads(path.read_text())["rows"]])
        return
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    ts = jnp.asarray(np.arange(0, args.t1 + args.dt_save / 2, args.dt_save), dtype)
    level = jnp.asarray(args.level, dtype)
    tol = jnp.asarray(args.tol, dtype)

    rows = []
    for gamma in args.gammas:
        for n in args.ns:
            beta = gamma * np.log(n)
            predicted = float(theory.clustering_time(n, beta, 1 - args.level, "SA"))
            keys = jax.random.split(jax.random.key(n), args.seeds)
            x0s = jax.vmap(lambda k, n=n: tf.sample_sphere(k, n, args.d, dtype=dtype))(keys)
            started = time.perf_counter()
            times = np.asarray(crossing_times(x0s, jnp.asarray(beta, dtype), ts, level, tol, tol))
            elapsed = time.perf_counter() - started
            finite = times[np.isfinite(times)]
            censored = int(np.sum(np.isinf(times)))
            failed = int(np.sum(np.isnan(times)))
            mean, half = t_interval(finite) if finite.size else (float("nan"), float("nan"))
            check = None
            if n <= args.check_max_n:
                x0 = tf.orthonormal_tokens(n, n, dtype=dtype)[None]
                check = float(crossing_times(x0, jnp.asarray(beta, dtype), ts, level, tol, tol)[0])
            row = dict(
                gamma=gamma,
                n=n,
                beta=beta,
                d=args.d,
                seeds=args.seeds,
                t1=args.t1,
                mean=mean,
                half_width=half,
                censored=censored,
                failed=failed,
                ode=predicted,
                orthonormal_particles=check,
                times=times.tolist(),
                seconds=elapsed,
            )
            rows.append(row)
            print(
                f"gamma={gamma:g} n={n:5d} beta={beta:6.2f}: t* = {mean:8.3f} ± {half:.3f} "
                f"(censored {censored}, failed {failed}); ODE {predicted:9.3f}; "
                f"orthonormal particles {check if check is None else round(check, 3)}; "
                f"{elapsed:.1f} s",
                flush=True,
            )
    print()
    summarize(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(args={**vars(args), "out": str(args.out)}, rows=rows)))


if __name__ == "__main__":
    main()

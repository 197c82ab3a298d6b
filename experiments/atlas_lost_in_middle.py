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

The gap against N (`--gap-ns`, then `--gap-report`) uses `fast_retrieval` instead: the same
per-start term with the field in O(N·K), RK4 on the angles and a hand-written adjoint, float32
(docs/atlas.md, R9, "Larger N").
"""

import argparse
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


def chain_profiles(n, ts, beta, lam, M, k_max, steps_per_unit=400) -> np.ndarray:
    """`chain_profile` at every t of `ts` (shape (T, n − 1)) in O(N) memory and time per step:
    the last row y_k(t)ᵀ = e_Nᵀ e^{a_k t W} solves ẏ = a_k Wᵀy (RK4, error far below 1e-9 for
    a_k t ≤ 2), and Wᵀy is a reverse prefix sum of the exponential ALiBi weights."""
    from scipy.special import iv

    pos = np.arange(n)
    z = np.concatenate([[1.0], np.cumsum(np.exp(-lam * np.arange(1, n) / n))])
    up, down = np.exp(lam * (pos - n) / n), np.exp(-lam * (pos - n) / n) / z
    down[0] = 0.0  # token 1 has no predecessor

    def wt(y):  # (Wᵀy)_k = up_k Σ_{j>k} down_j y_j
        tail = np.cumsum((down * y)[::-1])[::-1]
        return up * np.concatenate([tail[1:], [0.0]])

    ts = np.asarray(ts, float)
    total = np.zeros((ts.size, n - 1))
    for k in range(1, k_max + 1):
        a, omega = k**2 * iv(k, beta), np.exp(-0.5 * (np.pi * k / M) ** 2)
        y, now = np.eye(n)[-1], 0.0
        for i, t in enumerate(ts):
            steps = max(1, int(np.ceil((t - now) * steps_per_unit)))
            h = (t - now) / steps
            for _ in range(steps):
                k1 = a * wt(y)
                k2 = a * wt(y + 0.5 * h * k1)
                k3 = a * wt(y + 0.5 * h * k2)
                k4 = a * wt(y + h * k3)
                y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            now = t
            total[i] += omega * n * y[:-1]
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


def field_modes(beta: float, dtype) -> np.ndarray:
    """c_m, m = 1 … K, of h(u) = −β sin u e^{β cos u} = −Σ_m c_m sin mu (c_m = 2m I_m(β)),
    truncated where the rest is below the dtype's resolution of max |h| (K = 15 in float64 and
    9 in float32 at β = 1)."""
    from scipy.special import ive

    m = np.arange(1, 400)
    c = 2 * m * ive(m, beta) * np.exp(beta)
    tail = np.cumsum(c[::-1])[::-1]  # tail[i] = Σ_{m ≥ i+1} c_m
    K = int(np.argmax(tail <= np.finfo(dtype).eps * c[0] / 4))
    return c[:K]


def alibi_velocity(n, beta, lam, dtype=jnp.float64):
    """The authors' right-hand side (`authors_velocity`) as a jax function of the angles (n,), in
    O(N·K) per evaluation instead of O(N²): with h(u) = −Σ_m c_m sin mu (`field_modes`),
    Σ_{k<j} w_jk sin m(θ_j − θ_k) = sin mθ_j (W cos mθ)_j − cos mθ_j (W sin mθ)_j, and W x is a
    prefix sum because the ALiBi weights are exponential in the position."""
    if not 0 < lam <= 30:
        raise ValueError(f"`lam` must lie in (0, 30] (e^λ enters a prefix sum), got {lam!r}.")
    c = jnp.asarray(field_modes(beta, dtype), dtype)[:, None]
    m = jnp.arange(1, c.shape[0] + 1, dtype=dtype)[:, None]
    pos = np.arange(n)
    z = np.concatenate([[1.0], np.cumsum(np.exp(-lam * np.arange(1, n) / n))])
    # (z[0] = 1 for token 1, which has no predecessor: its prefix sum is 0)
    up = jnp.asarray(np.exp(lam * (pos - n) / n), dtype)  # e^{λ(k−N)/N} <= 1
    down = jnp.asarray(np.exp(-lam * (pos - n) / n) / z, dtype)
    block = min(32, n)
    padded = -(-n // block) * block
    tri = jnp.asarray(np.tril(np.ones((block, block))), dtype)

    def prefix_sum(x):  # (K, n) → inclusive prefix sums along tokens, blockwise (a small
        x = jnp.pad(x, ((0, 0), (0, padded - n))).reshape(x.shape[0], -1, block)  # matmul per
        inner = x @ tri.T  # block: 4× faster than jnp.cumsum alone on CPU)
        carry = jnp.cumsum(inner[..., -1], axis=-1) - inner[..., -1]
        return (inner + carry[..., None]).reshape(x.shape[0], padded)[:, :n]

    def causal(x):  # (K, n) → Σ_{k<j} w_jk x_k, the ALiBi weights normalised over predecessors
        prefix = prefix_sum(x * up[None])
        return jnp.pad(prefix[:, :-1], ((0, 0), (1, 0))) * down[None]

    def velocity(theta):
        cos, sin = jnp.cos(m * theta[None]), jnp.sin(m * theta[None])
        return -jnp.sum(c * (sin * causal(cos) - cos * causal(sin)), axis=0)

    return velocity


def fast_retrieval(n, beta, lam, ts, dt, M, k_max, dtype=jnp.float64):
    """The `by_parts` term of `retrieval_terms` for one start θ(0) (shape (n,)), computed without
    `tf.solve`: the field by `alibi_velocity` (O(N·K), not O(N²)); fixed-step RK4 on the angles
    in a `lax.scan`; and ∂θ_N(t)/∂θ(0) for all t at once by a hand-written discrete adjoint (a
    backward scan applying the `jax.vjp` of one RK4 step, recomputed from the stored states, to
    one cotangent per t), so memory is O(steps·N). Returns a function θ(0) → (T, n)."""
    ts = np.asarray(ts, float)
    idx = np.rint(ts / dt).astype(int)
    if np.any(np.abs(idx * dt - ts) > 1e-9 * max(1.0, ts.max())) or np.any(np.diff(idx) < 0):
        raise ValueError(f"`ts` must be increasing multiples of `dt` = {dt!r}, got {ts!r}.")
    velocity = alibi_velocity(n, beta, lam, dtype)

    def step(theta):
        k1 = velocity(theta)
        k2 = velocity(theta + 0.5 * dt * k1)
        k3 = velocity(theta + 0.5 * dt * k2)
        k4 = velocity(theta + dt * k3)
        return theta + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    steps = int(idx.max())
    last = jnp.zeros(n, dtype).at[-1].set(1.0)
    seeds = jnp.asarray(idx[None, :] == np.arange(1, steps + 1)[:, None], dtype)  # (steps, T)
    k = jnp.arange(1.0, k_max + 1.0, dtype=dtype)
    omega = jnp.exp(-0.5 * (jnp.pi * k / M) ** 2)

    def one(theta0):
        theta0 = theta0.astype(dtype)

        def forward(theta, _):
            nxt = step(theta)
            return nxt, nxt

        _, states = jax.lax.scan(forward, theta0, None, length=steps)
        states = jnp.concatenate([theta0[None], states])  # (steps + 1, n)

        def backward(cot, inputs):
            theta, seed = inputs  # the state before the step, and which t end at its end
            cot = cot + seed[:, None] * last[None]
            _, vjp = jax.vjp(step, theta)
            return jax.vmap(lambda v: vjp(v)[0])(cot), None

        cot0 = jnp.zeros((ts.size, n), dtype)
        grad, _ = jax.lax.scan(backward, cot0, (states[:-1], seeds), reverse=True)
        grad = grad + jnp.asarray(idx == 0, dtype)[:, None] * last[None]  # ∂θ_N(t)/∂θ(0): (T, n)
        final = states[jnp.asarray(idx), -1]  # θ_N(t): (T,)
        phase = jnp.cos(k[:, None, None] * (final[None, :, None] - theta0[None, None, :]))
        return n * jnp.einsum("k,ktn->tn", omega, phase * grad[None])

    return one


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
                        help="pool and report the .npz files of --gap-ns runs")  # fmt: skip
    parser.add_argument("--float64", action="store_true", help="--gap-ns in float64")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/atlas_lost_in_middle.png"))
    args = parser.parse_args()
    started = time.time()
    if args.gap_report is not None:
        runs = load_runs(args.gap_report)
        table = gap_report(gap_rows(runs))
        return write_gap_figure(table, minimum_report(runs, args), args)
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


BINS = 64  # per-start profiles are kept as means over sources s = j/N ∈ (b/64, (b+1)/64]


def bin_matrix(n: int) -> np.ndarray:
    """(BINS, n − 1) averaging matrix over sources j = 1 … N − 1 by bin (N a multiple of 64)."""
    if n % BINS:
        raise ValueError(f"`--gap-ns` must be multiples of {BINS}, got {n}.")
    j = np.arange(1, n)
    which = np.ceil(BINS * j / n).astype(int) - 1
    A = (which[None, :] == np.arange(BINS)[:, None]).astype(float)
    return A / np.maximum(A.sum(1, keepdims=True), 1)


def gap_main(args) -> None:
    """Per N of `--gap-ns`: the by-parts retrieval of each start (`fast_retrieval`, float32 unless
    `--float64`), kept per start as means over 64 source bins (one sample per start, so every
    interval is over independent starts), with the closed form and the finite-N linear chain on
    the same bins. Written after every batch to `<out>_N<n>_seed<seed>.npz`, so a stopped run
    keeps what it has; `--gap-report` pools such files (several seeds) and reports."""
    dtype = jnp.float64 if args.float64 else jnp.float32
    for n, samples in zip(args.gap_ns, args.gap_samples, strict=False):
        A = bin_matrix(n)
        s = np.arange(1, n) / n
        closed = np.stack([A @ theory.retrieval_profile(s, t, args.beta, args.lam, M=args.M)
                           for t in args.ts])  # fmt: skip
        chain = chain_profiles(n, args.ts, args.beta, args.lam, args.M, 20) @ A.T
        one = fast_retrieval(n, args.beta, args.lam, args.ts, args.dt, args.M, args.k_max, dtype)
        est = jax.jit(jax.vmap(lambda key: one(jax.random.uniform(key, (n,), maxval=2 * jnp.pi))))
        keys = jax.random.split(jax.random.key(n + 100_000 * args.gap_seed), samples)
        out = args.out.with_name(f"{args.out.stem}_N{n}_seed{args.gap_seed}.npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        parts, cpu, wall = [], time.process_time(), time.time()
        for i in range(0, samples, args.batch):
            parts.append(np.asarray(est(keys[i : i + args.batch]))[:, :, :-1] @ A.T)
            np.savez(out, bins=np.concatenate(parts), s=A @ s, closed=closed, chain=chain,
                     ts=np.asarray(args.ts), n=n, seed=args.gap_seed, dtype=str(dtype.dtype),
                     cpu_s=time.process_time() - cpu, wall_s=time.time() - wall)  # fmt: skip
        print(f"N = {n}: {samples} starts, {time.process_time() - cpu:.0f} s CPU, "
              f"{time.time() - wall:.0f} s wall -> {out}", flush=True)  # fmt: skip


def load_runs(paths) -> dict:
    """Pool the starts of `gap_main` files by N (equal ts required)."""
    runs = {}
    for path in paths:
        with np.load(path) as f:
            run = {key: f[key] for key in f.files}
        n = int(run["n"])
        if n in runs:
            if not np.array_equal(runs[n]["ts"], run["ts"]):
                raise ValueError(f"{path}: other ts than the pooled files of N = {n}.")
            runs[n]["bins"] = np.concatenate([runs[n]["bins"], run["bins"]])
        else:
            runs[n] = run
    return runs


def gap_rows(runs) -> list[dict]:
    """Band averages per start (sources s ∈ band, as in BANDS), in the format of `gap_report`."""
    rows = []
    for n, run in sorted(runs.items()):
        for i, t in enumerate(run["ts"]):
            for lo, hi in BANDS:
                keep = slice(int(lo * BINS), int(hi * BINS))
                rows.append(dict(n=n, t=float(t), band=[lo, hi],
                                 closed=float(run["closed"][i, keep].mean()),
                                 chain=float(run["chain"][i, keep].mean()),
                                 per_start=run["bins"][:, i, keep].mean(1).tolist()))  # fmt: skip
    return rows


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


MIN_WINDOW, END_WINDOW = 0.15, 3 / 16


def local_minimum(s, p, w=MIN_WINDOW) -> float:
    """Minimum of a cubic fitted to p over s ∈ [s₀ − w, s₀ + w] ∩ [1/8, 1], s₀ iterated to the
    fit's minimum (start: the smallest value). On the closed form's 64 bins it is within 0.2 %
    of the exact minimum at t = 1, 1.5, 2 (a global polynomial over [1/8, 1] is not: 1–8 %)."""
    s0 = s[np.argmin(np.where(s >= 0.125, p, np.inf))]
    for _ in range(20):
        keep = (s >= max(s0 - w, 0.125)) & (s <= s0 + w)
        cubic = np.poly1d(np.polyfit(s[keep], p[keep], 3))
        grid = np.linspace(s[keep][0], s[keep][-1], 2001)
        s1 = grid[np.argmin(cubic(grid))]
        if abs(s1 - s0) < 1e-6:
            break
        s0 = s1
    return float(s0)


def end_slope(s, p, w=END_WINDOW) -> float:
    """dp/ds at s = 1 from a quadratic fitted over s > 1 − w."""
    keep = s > 1 - w
    return float(np.poly1d(np.polyfit(s[keep], p[keep], 2)).deriv()(1.0))


def sign_change(ts, slopes) -> float:
    """First t where the slope goes from > 0 to <= 0, linear between the bracketing times (nan:
    none)."""
    i = np.flatnonzero((slopes[:-1] > 0) & (slopes[1:] <= 0))
    if not i.size:
        return float("nan")
    i = i[0]
    return float(ts[i] + (ts[i + 1] - ts[i]) * slopes[i] / (slopes[i] - slopes[i + 1]))


def features(s, profiles, ts, min_ts) -> tuple[list[float], float]:
    """Minimum positions at the times `min_ts` and t_crit (sign change of the end slope)."""
    mins = [local_minimum(s, profiles[list(ts).index(t)]) for t in min_ts]
    return mins, sign_change(ts, np.array([end_slope(s, p) for p in profiles]))


SHIFTS = np.linspace(-0.2, 0.2, 401)


def shape_shifts(s, profiles, shape, weights=None, shifts=SHIFTS) -> np.ndarray:
    """δ of the least-squares fit p(s) ≈ A·shape(s − δ) + B over s ∈ [1/8, 7/8] (δ on the grid
    `shifts`, A and B solved for each δ): the minimum of such a fit lies at the shape's minimum
    plus δ. Uses every bin, so it is far less noisy than a local fit around a shallow minimum,
    at the price of assuming the closed form's shape up to scale, offset and shift.
    `profiles`: (..., bins) on the abscissae `s`; returns δ of shape profiles.shape[:-1]."""
    keep = (s >= 0.125) & (s <= 0.875)
    w = np.ones(keep.sum()) if weights is None else weights[keep]
    y = profiles[..., keep] * w
    residual = []
    for delta in shifts:
        X = np.stack([shape(s[keep] - delta), np.ones(keep.sum())], 1) * w[:, None]
        q, _ = np.linalg.qr(X)
        residual.append(np.sum(y**2, -1) - np.sum((y @ q) ** 2, -1))
    return shifts[np.argmin(np.stack(residual, -1), -1)]


def minimum_report(runs, args, boot: int = 1000) -> list[dict]:
    """Per N: the minimum positions at t = 1, 1.5, 2 and t_crit of the particles' mean binned
    profile (`features`), 95 % percentile intervals from a bootstrap over starts; the same
    procedure on the closed form's and the finite-N chain's bins, and the exact closed form."""
    min_ts = [t for t in (1.0, 1.5, 2.0) if t in args.ts]
    fine = np.linspace(0.05, 0.999, 20000)
    exact = [fine[np.argmin(theory.retrieval_profile(fine, t, args.beta, args.lam, M=args.M))]
             for t in min_ts]  # fmt: skip
    exact_t_crit = theory.retrieval_t_crit(args.beta, args.lam, M=args.M)
    print(f"closed form (exact): minimum s at t = {min_ts}: {np.round(exact, 4)}, "
          f"t_crit = {exact_t_crit:.4f}")  # fmt: skip
    rng = np.random.default_rng(0)
    out = []
    for n, run in sorted(runs.items()):
        ts, bins = list(run["ts"]), run["bins"]
        valid = bin_matrix(n).sum(1) > 0
        s = run["s"][valid]

        def both(profiles, s=s, ts=ts, valid=valid):
            mins, t_crit = features(s, profiles[:, valid], ts, min_ts)
            return np.r_[mins, t_crit]

        point = both(bins.mean(0))
        counts = rng.multinomial(len(bins), np.full(len(bins), 1 / len(bins)), size=boot)
        means = (counts @ bins.reshape(len(bins), -1) / len(bins)).reshape(boot, *bins.shape[1:])
        draws = np.array([both(m) for m in means])
        lo, hi = np.nanpercentile(draws, [2.5, 97.5], axis=0)
        closed, chain = both(run["closed"]), both(run["chain"])
        slopes = np.array([[end_slope(s, p[valid]) for p in m] for m in [bins.mean(0), *means]])
        slope_sd = slopes[1:].std(0, ddof=1)
        cells = ", ".join(
            f"t = {t:g}: {v:.2f} ± {1.96 * e:.2f} (closed form's bins {end_slope(s, c[valid]):.2f})"
            for t, v, e, c in zip(ts, slopes[0], slope_sd, run["closed"], strict=True)
        )
        print(f"N = {n}: end slope dp/ds(1) per t (± 1.96 bootstrap sd): {cells}")
        shift, shift_lo, shift_hi = [], [], []
        for t in min_ts:
            i = ts.index(t)

            def shape(x, t=t):
                return theory.retrieval_profile(np.clip(x, 1e-3, 1 - 1e-3), t, args.beta,
                                                args.lam, M=args.M)  # fmt: skip

            se = bins[:, i].std(0, ddof=1) / np.sqrt(len(bins))
            wts = np.where(valid & (se > 0), 1 / np.where(se > 0, se, 1), 0.0)[valid]
            shift.append(float(shape_shifts(s, bins.mean(0)[i, valid], shape, wts)))
            d = shape_shifts(s, means[:, i, valid], shape, wts)
            shift_lo.append(float(np.percentile(d, 2.5)))
            shift_hi.append(float(np.percentile(d, 97.5)))
        out.append(dict(n=n, starts=len(bins), min_ts=min_ts, s_min=point[:-1].tolist(),
                        t_crit=point[-1], s_min_lo=lo[:-1].tolist(), s_min_hi=hi[:-1].tolist(),
                        t_crit_lo=lo[-1], t_crit_hi=hi[-1], end_slope=slopes[0].tolist(),
                        end_slope_sd=slope_sd.tolist(),
                        no_crossing=float(np.mean(np.isnan(draws[:, -1]))),
                        closed_binned=closed.tolist(), chain_binned=chain.tolist(),
                        closed_exact=[float(e) for e in exact],
                        shape_s_min=[e + d for e, d in zip(exact, shift, strict=True)],
                        shape_s_min_lo=[e + d for e, d in zip(exact, shift_lo, strict=True)],
                        shape_s_min_hi=[e + d for e, d in zip(exact, shift_hi, strict=True)],
                        t_crit_exact=exact_t_crit))  # fmt: skip
        rel = point / np.r_[exact, exact_t_crit] - 1
        cells = ", ".join(
            f"{name} {p:.3f} [{a:.3f}, {b:.3f}] ({r:+.1%})"
            for name, p, a, b, r in zip([f"s_min(t={t:g})" for t in min_ts] + ["t_crit"],
                                        point, lo, hi, rel, strict=True)
        )  # fmt: skip
        shifted = ", ".join(f"t = {t:g}: {e + d:.3f} [{e + a:.3f}, {e + b:.3f}] ({d / e:+.1%})"
                            for t, e, d, a, b in zip(min_ts, exact, shift, shift_lo, shift_hi,
                                                     strict=True))  # fmt: skip
        print(f"N = {n}: minimum by the shifted closed-form shape {shifted}")
        print(
            f"N = {n} ({len(bins)} starts): {cells}; the same fits on the closed form's bins "
            f"{np.round(closed, 4)}, on the chain's {np.round(chain, 4)}",
            flush=True,
        )
    return out


def write_gap_figure(table, minima, args) -> None:
    """Left: N·(1 − particles/chain) (sources s ∈ (1/8, 7/8]) against N, flat if the gap ∝ 1/N.
    Right: the particles' minimum positions and t_crit relative to the closed form, against N."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.0))
    for t in sorted({r["t"] for r in table}):
        if t not in (1.5, 2.0, 2.5):
            continue
        rows = [r for r in table if r["t"] == t and r["band"] == [0.125, 0.875]]
        ns = np.array([r["n"] for r in rows])
        gap = np.array([1 - r["measured"] / r["chain"] for r in rows])
        half = np.array([r["half"] / r["chain"] for r in rows])
        ax.errorbar(ns, ns * gap, yerr=ns * half, fmt="o-", capsize=3, label=f"t = {t:g} (95 %)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (tokens)")
    ax.set_ylabel("N · (1 − particles / linear chain), s ∈ (1/8, 7/8]")
    ax.set_title(f"gap to the kinetic limit × N (flat: gap ∝ 1/N), β = {args.beta:g}, "
                 f"λ = {args.lam:g}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    ns = np.array([r["n"] for r in minima], float)
    for i, t in enumerate(minima[0]["min_ts"]):
        exact = minima[0]["closed_exact"][i]
        y = np.array([r["shape_s_min"][i] for r in minima]) / exact - 1
        bounds = [[r["shape_s_min_lo"][i], r["shape_s_min_hi"][i]] for r in minima]
        err = np.abs(np.array(bounds).T / exact - 1 - y)
        bx.errorbar(ns * 1.03**i, y, yerr=err, fmt="o-", capsize=3,
                    label=f"minimum s (shape fit), t = {t:g}")  # fmt: skip
    y = np.array([r["t_crit"] for r in minima]) / minima[0]["t_crit_exact"] - 1
    err = np.abs(np.array([[r["t_crit_lo"], r["t_crit_hi"]] for r in minima]).T
                 / minima[0]["t_crit_exact"] - 1 - y)  # fmt: skip
    bx.errorbar(ns * 0.97, y, yerr=np.nan_to_num(err), fmt="s", capsize=3,
                label="t_crit (end slope; none: no sign change)")  # fmt: skip
    bx.axhspan(-0.05, 0.05, color="grey", alpha=0.2, label="±5 %")
    bx.set_xscale("log", base=2)
    bx.set_ylim(-0.6, 0.6)
    bx.set_xlabel("N (tokens)")
    bx.set_ylabel("particles / closed form − 1 (95 % bootstrap)")
    bx.set_title("the particles' minimum position and t_crit against the closed form", fontsize=9)
    bx.legend(fontsize=7)
    write_figure(fig, args.out.with_name(args.out.stem + "_gap.png"),
                 dict(gap=table, minima=minima))  # fmt: skip


if __name__ == "__main__":
    main()

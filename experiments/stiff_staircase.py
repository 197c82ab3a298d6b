"""Large-β metastability on the circle, to the last merge: the energy staircase and its cost.

USA with Q = K = V = I on the circle (n = 6 tokens), β = 50-200, in the rescaled time
τ = e^{β} t (`UnnormalizedSelfAttention(time_rescaled=True)`): the field is then
e^{β(<x_i,x_j> - 1)}-weighted, so tokens inside a cluster contract at rates O(1) while two
clusters at angle D attract at rates ~ e^{-β(1 - cos D)}. Merges happen at τ ~ e^{cβ}: hundreds
of orders of magnitude of time, with fast contracting modes throughout. An explicit solver is
held to its stability limit (steps ~ O(1) in τ) and never gets there; an L-stable implicit solver
(Kvaerno5 with a Newton root finder) takes steps proportional to τ once the clusters have formed.

For each β the script solves with both, saves at log-spaced τ, and reports: the plateaus
(cluster sizes, rescaled energy e^{-β}E_β = (1/2n²)Σ_ij e^{β(<x_i,x_j>-1)}/β), the merge times,
each merge against the two-cluster estimate of the plateau it ends (below), steps and wall time.

Two tight clusters of m_a, m_b of n tokens at angle D stay tight, and their separation obeys
Ḋ = -((m_a + m_b)/n) e^{-β(1 - cos D)} sin D (rescaled USA angle form); its exact solution
`tf.theory.two_cluster_merge_time` gives each plateau's merge time (exact for two clusters; with
more, the pair with the smallest time goes first and the others are neglected). Laplace's
estimate e^{β(1 - cos D)}/(((m_a + m_b)/n) β sin² D) is reported beside it; it is wrong near
D = π (+0.93 decades at β = 50, D = 3.1). A merge out of a two-cluster plateau more than a
decade before the exact time is marked "numerical", in the JSON and in the figure (red): at
β = 50 the solve's last merge (5+1 → 6 at τ = 10^33.6) came after a drift of 0.13 rad of the
exact invariant Σ_i θ_i, while the exact time is 10^43.48, beyond the horizon e^{2β}.

    python experiments/stiff_staircase.py --out out/stiff_staircase

The exact cluster reduction (`experiments/reduced_staircase.py`: weighted particles and a
log-time clock, no stiffness left) runs β = 50, 100 and 200 to e^{2β}; REPRODUCTION.md has both.
"""

import argparse
import json
import pathlib
import time

import diffrax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optimistix as optx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import transformer_flows as tf  # noqa: E402

jax.config.update("jax_enable_x64", True)


# Compiled once: called eagerly, cluster_labels' while_loop is lowered afresh for each of the
# thousands of saved states.
_cluster_labels = jax.jit(tf.cluster_labels)
_rescaled_energy = jax.jit(lambda x, beta: tf.energy(x, beta, rescaled=True))


def plateaus(ts, xs, beta, delta):
    """Runs of save times with the same partition: (τ start, τ end, sizes, centre angles)."""
    runs = []
    for t, x in zip(ts, xs, strict=True):
        labels = np.asarray(_cluster_labels(x, delta))
        groups = sorted(
            np.unique(labels), key=lambda g: np.angle(np.mean(x[labels == g] @ [1, 1j]))
        )
        sizes = tuple(int(np.sum(labels == g)) for g in groups)
        centres = [float(np.angle(np.mean(x[labels == g] @ [1, 1j]))) for g in groups]
        energy = float(_rescaled_energy(x, beta))
        if runs and runs[-1]["sizes"] == sizes:
            runs[-1]["until"] = float(t)
        else:
            runs.append(
                dict(since=float(t), until=float(t), sizes=sizes, centres=centres, energy=energy)
            )
    return runs


def predicted_merge(run, n, beta, method="exact"):
    """log₁₀ of the first merge from a plateau: the two-cluster time of each neighbouring pair
    from its gap D to π/2 (or to D/2 if D is already below π/2), the pair with the smallest
    time first. Exact (`tf.theory.two_cluster_merge_time`) for a plateau of two tight
    clusters; with more clusters, the others' pull is neglected (an estimate). `method`
    "laplace" gives the old endpoint estimate for comparison (wrong near D = π)."""
    sizes, centres = run["sizes"], run["centres"]
    if len(sizes) < 2:
        return None
    best = None
    pairs = [(a, (a + 1) % len(sizes)) for a in range(len(sizes) if len(sizes) > 2 else 1)]
    for a, b in pairs:
        gap = abs(np.angle(np.exp(1j * (centres[b] - centres[a]))))
        log_tau = tf.theory.two_cluster_merge_time(
            beta,
            gap,
            min(np.pi / 2, gap / 2),
            masses=(sizes[a], sizes[b]),
            n=n,
            method=method,
            log10=True,
        )
        if best is None or log_tau < best:
            best = log_tau
    return float(best)


def numerical_merge(run) -> bool:
    """A merge out of a plateau of two tight clusters is exact-reducible: if the solve merged
    more than a decade before the exact time, the merge is the solve's error, not the flow's."""
    if len(run["sizes"]) != 2 or run.get("log10 predicted merge tau") is None:
        return False
    return run["log10 merge tau"] < run["log10 predicted merge tau"] - 1


def solve(beta, theta0, ts, solver, max_steps):
    """The angle form (7.1) of rescaled USA: Kuramoto with w_ij = e^{β cos(θ_i-θ_j)}/n and
    coupling e^{-β}. (The point form with `Renormalized` took more steps: 100 000 Kvaerno5
    steps reached τ = 1.4e15 at β = 50, against 20 000 to τ = 1.6e21 in angles.)"""
    start = time.perf_counter()
    trajectory = tf.solve(
        tf.Kuramoto(beta, coupling=np.exp(-beta)),
        theta0,
        ts,
        solver=solver,
        rtol=1e-8,
        atol=1e-8,
        max_steps=max_steps,
        throw=False,
    )
    jax.block_until_ready(trajectory.xs)
    return trajectory, time.perf_counter() - start


def solve_with_restarts(beta, theta0, solver, horizon, steps_per_segment):
    """Integrate to `horizon` in segments, each restarted at local time 0 from the last saved
    state before the previous segment stalled. Why: a merge of two clusters happens on a
    time scale O(1) in τ, while the merge itself comes at τ ~ e^{cβ} (1e21 at β = 50): the
    step the merge needs is below the float64 resolution of τ there, so any single solve stalls
    (rejected steps, no progress). The field is autonomous, so a restart at local time 0 with
    the offset kept aside resolves it; each restart brings the merge closer in local time.
    Returns the saved times (with offsets), states, and counts of steps and segments."""
    origin, state = 0.0, theta0
    times, states = [0.0], [np.asarray(theta0)]
    steps = rejected = segments = 0
    while origin < horizon and segments < 400:
        segments += 1
        span = horizon - origin
        local = jnp.concatenate([jnp.zeros(1), jnp.logspace(-3, np.log10(span), 200)])
        trajectory, _ = solve(beta, state, local, solver, steps_per_segment)
        steps += int(trajectory.stats["num_steps"])
        rejected += int(trajectory.stats["num_rejected_steps"])
        xs = np.asarray(trajectory.xs)
        good = np.flatnonzero(np.all(np.isfinite(xs), axis=1))
        last = int(good[-1])
        times.extend(origin + float(t) for t in np.asarray(local)[1 : last + 1])
        states.extend(xs[1 : last + 1])
        if trajectory.succeeded:
            break
        if last == 0:
            raise RuntimeError(f"no progress from τ = {origin:.3e}: the segment stalled at once")
        origin, state = origin + float(local[last]), jnp.asarray(xs[last])
    return (
        np.asarray(times),
        np.stack(states),
        dict(steps=steps, rejected=rejected, segments=segments),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/stiff_staircase"))
    parser.add_argument("--betas", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--delta", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, default=100_000, help="single-solve attempts")
    parser.add_argument("--segment-steps", type=int, default=20_000, help="per restart")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    theta0 = tf.uniform_angles(jax.random.key(args.seed), args.n)
    solvers = (
        ("kvaerno5", diffrax.Kvaerno5()),
        ("kvaerno5_newton", diffrax.Kvaerno5(root_finder=optx.Newton(rtol=1e-10, atol=1e-10))),
        ("tsit5", diffrax.Tsit5()),
    )
    report = []
    figure, axes = plt.subplots(1, len(args.betas), figsize=(6 * len(args.betas), 4.2))
    for ax, beta in zip(np.atleast_1d(axes), args.betas, strict=True):
        # τ from 1e-3 to e^{2β}: beyond the last merge (1 - cos D <= 2).
        ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-3, 2 * beta / np.log(10), 400)])
        row = {"beta": beta}
        for name, solver in solvers:
            # Wall time includes compilation (a few seconds): the runs differ by far more.
            trajectory, seconds = solve(beta, theta0, ts, solver, args.max_steps)
            finite = np.all(np.isfinite(np.asarray(trajectory.xs)), axis=1)
            row[name] = {
                "succeeded": bool(trajectory.succeeded),
                "steps": int(trajectory.stats["num_steps"]),
                "rejected": int(trajectory.stats["num_rejected_steps"]),
                "seconds": seconds,
                "log10 tau reached": float(np.log10(float(ts[np.flatnonzero(finite)[-1]]))),
            }
            print(beta, name, row[name], flush=True)
        start = time.perf_counter()
        saved, angles, cost = solve_with_restarts(
            beta, theta0, solvers[0][1], float(ts[-1]), args.segment_steps
        )
        cost["seconds"] = time.perf_counter() - start
        row["kvaerno5 with restarts"] = cost
        print(beta, "restarts", cost, flush=True)
        xs = np.asarray(tf.angles_to_points(angles))
        runs = plateaus(saved, xs, beta, args.delta)
        # Σ_i θ_i is an exact invariant (the Kuramoto sum is antisymmetric): its drift is the
        # solve's own error. A plateau reached after a drift comparable to the flow's motion
        # is numerical (at β = 50 the last merge was: REPRODUCTION.md).
        # (modulo 2π: the solve may wrap an angle)
        drift = np.abs(np.angle(np.exp(1j * (angles.sum(axis=1) - angles[0].sum()))))
        for run in runs:
            run["invariant drift at start"] = float(drift[np.searchsorted(saved, run["since"])])
        for previous, run in zip(runs, runs[1:], strict=False):
            previous["log10 merge tau"] = float(np.log10(run["since"]))
            previous["log10 predicted merge tau"] = predicted_merge(previous, args.n, beta)
            previous["log10 laplace merge tau"] = predicted_merge(
                previous, args.n, beta, method="laplace"
            )
            previous["numerical merge"] = numerical_merge(previous)
            run["numerical"] = previous["numerical merge"] or previous.get("numerical", False)
        row["plateaus"] = runs
        energies = [float(_rescaled_energy(x, beta)) for x in xs[1:]]
        ax.semilogx(saved[1:], energies, color="k")
        for run in runs:
            numerical = run.get("numerical", False)
            ax.annotate(
                "+".join(map(str, run["sizes"])) + (" (numerical)" if numerical else ""),
                (max(run["since"], 1e-3), run["energy"]),
                fontsize=7,
                color="C3" if numerical else "k",
                xytext=(2, 3),
                textcoords="offset points",
            )
            if numerical:
                ax.axvspan(run["since"], max(run["until"], run["since"]), color="C3", alpha=0.1)
            exact = run.get("log10 predicted merge tau")
            if exact is not None and len(run["sizes"]) == 2:
                horizon = 2 * beta / np.log(10)
                if exact <= horizon:
                    ax.axvline(10.0**exact, color="C0", ls=":", lw=1)
                where = "beyond the horizon $e^{2\\beta}$" if exact > horizon else "dotted"
                ax.text(
                    0.02,
                    0.97,
                    f"exact {'+'.join(map(str, run['sizes']))} merge: "
                    f"$\\tau = 10^{{{exact:.2f}}}$ ({where})\n"
                    "red: after a merge a decade before the exact time (numerical)",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="C0",
                    va="top",
                )
        ax.set_title(f"$\\beta$ = {beta:g}, n = {args.n} (USA, circle)")
        ax.set_xlabel("$\\tau = e^{\\beta} t$")
        ax.set_ylabel("$e^{-\\beta} E_\\beta$")
        report.append(row)
        print(json.dumps(row, default=str))
    figure.tight_layout()
    figure.savefig(args.out / "stiff_staircase.png", dpi=120)
    (args.out / "stiff_staircase.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()

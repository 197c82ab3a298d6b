"""Large-β energy staircases to τ = e^{2β} with the exact cluster reduction, in log time.

The system of `stiff_staircase.py`: USA with Q = K = V = I on the circle, n = 6 tokens from
`uniform_angles(key(3), 6)`, in the rescaled time τ = e^{β}t (angle form, coupling e^{-β}).
That script's restarted Kvaerno5 solve reached the last merge at β = 50 only as a numerical
artefact and could not run β = 100 or 200 (REPRODUCTION.md). Two exact changes make them
cheap and trustworthy:

1. **The reduction** (`tf.solve_reduced`'s rule, `tf.merge_particles`): tokens within
   `--tolerance` (1e-6 rad) merge into one particle of their summed mass at their circular
   mean; the masses enter the field exactly (`Kuramoto(masses=...)`: w_ij ∝ m_j e^{β cos}).
   The contracting modes inside clusters, which made the problem stiff, are gone.
2. **A clock**: with r(θ) = Σ_{i<j} e^{β(cos(θ_i - θ_j) - 1)} (the attraction rate of the
   closest pair, smoothed), the solve runs in s with dτ/ds = 1/r and dθ/ds = θ̇/r, τ a
   state variable. This is the same orbit (an autonomous field reparametrised in time);
   every rate is O(1) in s, so no step is below the float64 resolution of τ (the failure of
   the single and restarted solves in τ). Each segment ends at a merge (a diffrax event on
   the smallest gap <= tolerance) or at τ = e^{2β}.

Reported per plateau (a constant set of particles): the cluster sizes, the rescaled energy
e^{-β}E_β = (1/(2βn²)) Σ_ij m_i m_j e^{β(cos - 1)} against the tight-cluster value
Σ_k m_k²/(2βn²), the measured merge time against the exact two-cluster time
(`tf.theory.two_cluster_merge_time`, from the plateau's gap to the merge tolerance; exact for
a plateau of two clusters, the other clusters' pull neglected otherwise) and Laplace's estimate;
the drift of the invariant Σ_i m_i θ_i (the solve's error), steps and wall time.

    python experiments/reduced_staircase.py --out out/reduced_staircase
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import transformer_flows as tf  # noqa: E402

jax.config.update("jax_enable_x64", True)


def wrapped(a):
    return np.angle(np.exp(1j * np.asarray(a)))


def gaps_of(theta):
    """Pairwise wrapped distances, jnp (under jit)."""
    d = theta[None, :] - theta[:, None]
    return jnp.abs(jnp.angle(jnp.exp(1j * d)))


def clocked(beta):
    """dy/ds for y = (θ_1..θ_k, τ): the rescaled USA velocity (with masses) divided by r."""

    def vector_field(s, y, masses):
        theta = y[:-1]
        k = theta.shape[0]
        iu = jnp.triu_indices(k, 1)
        log_rate = jax.scipy.special.logsumexp(beta * (jnp.cos(theta[:, None] - theta) - 1)[iu])
        # Kuramoto computes e^{β cos}; the coupling e^{-β - ln r} brings it to e^{β(cos-1)}/r.
        field = tf.Kuramoto(beta, coupling=jnp.exp(-beta - log_rate), masses=masses)
        return jnp.concatenate([field(0.0, theta), jnp.exp(-log_rate)[None]])

    return vector_field


def segment(beta, theta, tau0, masses, tolerance, horizon, rtol, max_steps):
    """One solve in s from (θ, τ0) until a merge or τ = horizon; saves every step."""
    k = theta.shape[0]
    eye = jnp.eye(k, dtype=bool)

    def merged(t, y, args, **kwargs):
        return jnp.min(jnp.where(eye, jnp.inf, gaps_of(y[:-1]))) <= tolerance

    def done(t, y, args, **kwargs):
        return y[-1] >= horizon

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(clocked(beta)),
        diffrax.Tsit5(),
        t0=0.0,
        t1=1e9,
        dt0=None,
        y0=jnp.concatenate([jnp.asarray(theta), jnp.asarray([tau0])]),
        args=jnp.asarray(masses),
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
        event=diffrax.Event((merged, done)),
        max_steps=max_steps,
        throw=False,
    )
    ys = np.asarray(solution.ys)
    keep = np.all(np.isfinite(ys), axis=1)
    ys = ys[keep]
    reason = "max_steps"
    if solution.result == diffrax.RESULTS.event_occurred:
        reason = "merge" if bool(solution.event_mask[0]) else "horizon"
    elif solution.result != diffrax.RESULTS.successful:
        reason = str(solution.result)
    return ys, reason, int(solution.stats["num_steps"]), int(solution.stats["num_rejected_steps"])


def predicted_merge(theta, masses, beta, n, tolerance, method):
    """(log₁₀ duration, pair) of the first merge from a plateau: each pair of circular
    neighbours closes its gap D to `tolerance` in the exact two-cluster time (others
    neglected); the smallest wins."""
    order = np.argsort(wrapped(theta))
    k = len(order)
    pairs = [(order[a], order[(a + 1) % k]) for a in range(k if k > 2 else 1)]
    best = None
    for a, b in pairs:
        gap = abs(wrapped(theta[b] - theta[a]))
        log_tau = tf.theory.two_cluster_merge_time(
            beta,
            gap,
            min(tolerance, gap / 2),
            masses=(masses[a], masses[b]),
            n=n,
            method=method,
            log10=True,
        )
        if best is None or log_tau < best[0]:
            best = (float(log_tau), (int(a), int(b)), float(gap))
    return best


def staircase(beta, theta0, tolerance, rtol, max_steps):
    n = theta0.shape[0]
    horizon = float(np.exp(2 * beta))
    theta, masses, labels = tf.merge_particles(theta0, np.ones(n), tolerance, angles=True)
    tau, runs, curve = 0.0, [], []
    steps = rejected = 0
    invariant0 = float(np.sum(np.asarray(theta0)))
    drift = 0.0
    start = time.perf_counter()
    while True:
        run = {
            "since": tau,
            "sizes": [int(m) for m in masses[np.argsort(wrapped(theta))]],
            "energy": float(tf.torus_energy(theta, beta, rescaled=True, masses=masses)),
            # Its limit when every cluster is a point and the clusters are far apart.
            "tight-cluster energy": float(np.sum(masses**2) / (2 * beta * n**2)),
            "invariant drift at start": drift,
        }
        if len(masses) > 1:
            exact = predicted_merge(theta, masses, beta, n, tolerance, "exact")
            laplace = predicted_merge(theta, masses, beta, n, tolerance, "laplace")
            run["gap"] = exact[2]
            run["log10 predicted merge tau"] = float(np.log10(tau + 10.0 ** exact[0]))
            run["log10 laplace merge tau"] = float(np.log10(tau + 10.0 ** laplace[0]))
        runs.append(run)
        if len(masses) == 1:
            run["plateau energy"] = run["energy"]
            curve.append((horizon, run["energy"]))
            break
        ys, reason, s, r = segment(beta, theta, tau, masses, tolerance, horizon, rtol, max_steps)
        steps, rejected = steps + s, rejected + r
        energies = [float(tf.torus_energy(y[:-1], beta, rescaled=True, masses=masses)) for y in ys]
        curve.extend(zip(ys[:, -1].tolist(), energies, strict=True))
        # The plateau's energy: at the saved step nearest the middle of the plateau in log τ
        # (from τ = 1 for the first), away from the merges at either end.
        middle = 0.5 * (np.log(max(tau, 1.0)) + np.log(ys[-1, -1]))
        nearest = int(np.argmin(np.abs(np.log(np.maximum(ys[:, -1], 1e-300)) - middle)))
        run["plateau energy"] = energies[nearest]
        run["log10 tau of plateau energy"] = float(np.log10(ys[nearest, -1]))
        theta, tau = ys[-1, :-1], float(ys[-1, -1])
        # Σ m_i θ_i is conserved by the flow (antisymmetric coupling) and, to O(tolerance³),
        # by a merge at the circular mean: its change is the solve's error.
        drift = abs(float(wrapped(np.sum(masses * theta) - invariant0)))
        run["until"] = tau
        run["end"] = reason
        if len(masses) == 2:
            # Exact check of the log-time integration: the two-cluster time from the
            # plateau's gap to the gap actually reached.
            reached = abs(float(wrapped(theta[1] - theta[0])))
            if reached < run["gap"]:
                run["log10 exact time to the gap reached"] = float(
                    np.log10(
                        run["since"]
                        + tf.theory.two_cluster_merge_time(
                            beta, run["gap"], reached, masses=tuple(masses), n=n
                        )
                    )
                )
            run["gap reached"] = reached
        if reason != "merge":
            run["log10 tau reached"] = float(np.log10(tau))
            break
        run["log10 merge tau"] = float(np.log10(tau))
        theta, masses, merge_labels = tf.merge_particles(theta, masses, tolerance, angles=True)
        labels = merge_labels[labels]
    cost = dict(steps=steps, rejected=rejected, seconds=time.perf_counter() - start)
    return runs, np.asarray(curve), cost, drift


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/reduced_staircase"))
    parser.add_argument("--betas", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="merge distance (rad)")
    parser.add_argument("--rtol", type=float, default=1e-10)
    parser.add_argument("--max-steps", type=int, default=20_000, help="per segment")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    theta0 = np.asarray(tf.uniform_angles(jax.random.key(args.seed), args.n), dtype=np.float64)
    report = []
    for beta in args.betas:
        runs, curve, cost, drift = staircase(
            beta, theta0, args.tolerance, args.rtol, args.max_steps
        )
        row = {"beta": beta, "plateaus": runs, "cost": cost, "final invariant drift": drift}
        report.append(row)
        print(json.dumps(row, indent=1), flush=True)
        figure, ax = plt.subplots(figsize=(7, 4.2))
        shown = curve[curve[:, 0] > 0]
        ax.semilogx(shown[:, 0], shown[:, 1], color="k", lw=1.2, label="reduced solve")
        horizon = 2 * beta / np.log(10)
        for run in runs:
            ax.annotate(
                "+".join(map(str, run["sizes"])),
                (max(run["since"], shown[0, 0]), run["energy"]),
                fontsize=7,
                xytext=(2, 3),
                textcoords="offset points",
            )
            predicted = run.get("log10 predicted merge tau")
            if predicted is not None and predicted <= horizon:
                ax.axvline(10.0**predicted, color="C0", ls=":", lw=1)
            elif predicted is not None:
                ax.text(
                    0.02,
                    0.97,
                    f"{'+'.join(map(str, run['sizes']))} merges at "
                    f"$\\tau = 10^{{{predicted:.2f}}}$ (exact), beyond the horizon",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="C0",
                    va="top",
                )
        ax.axvline(10.0**horizon, color="0.6", lw=1)
        ax.plot([], [], color="C0", ls=":", lw=1, label="exact two-cluster merge time")
        ax.set_title(
            f"$\\beta$ = {beta:g}, n = {args.n} (USA, circle): exact reduction, log-time clock"
        )
        ax.set_xlabel("$\\tau = e^{\\beta} t$ (grey: $e^{2\\beta}$)")
        ax.set_ylabel("$e^{-\\beta} E_\\beta$")
        ax.legend(loc="lower right", fontsize=7)
        figure.tight_layout()
        figure.savefig(args.out / f"reduced_staircase_beta{beta:g}.png", dpi=120)
        plt.close(figure)
    (args.out / "reduced_staircase.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

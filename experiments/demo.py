"""`make demo`: self-attention on S² (n = 64, β = 1, uniform starts), the paper's movie set-up,
then metastability: on the circle at β = 5 (n = 16) the tokens form a few clusters quickly and
then stay apart for decades of time before they merge (a plateau of the energy staircase).

Writes a PNG of the trajectories and energy, a GIF of the particles, a PNG of the metastable
plateau in log time, and prints cluster statistics of both.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402

import transformer_flows as tf  # noqa: E402


def sphere_axes(ax):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 40), np.linspace(0, np.pi, 20))
    ax.plot_wireframe(
        np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", linewidth=0.4
    )
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.set_axis_off()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/demo", help="output folder")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--t1", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-n", type=int, default=16, help="tokens of the plateau demo")
    parser.add_argument("--meta-beta", type=float, default=5.0, help="β of the plateau demo")
    parser.add_argument("--meta-t1", type=float, default=1e4, help="its horizon (log-spaced)")
    options = parser.parse_args()
    # A second `make demo` loads its programs from disk; the demo makes its own inputs, so its
    # run-time checks may return NaN rather than raise (programs with callbacks are not cached).
    tf.enable_compilation_cache(nan_checks=True)
    out = pathlib.Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    x0 = tf.sample_sphere(jax.random.key(options.seed), options.n, 3)
    ts = jnp.linspace(0.0, options.t1, 151)
    field = tf.SelfAttention(options.beta)
    tf.solve(field, x0, ts).xs.block_until_ready()  # compile
    start = time.perf_counter()
    traj = tf.solve(field, x0, ts)
    traj.xs.block_until_ready()
    elapsed = time.perf_counter() - start
    euler = tf.solve(field, x0, ts, solver=tf.NormalizedEuler(), dt0=0.1)

    xs = traj.xs
    energies = jax.vmap(tf.energy, in_axes=(0, None))(xs, options.beta)
    clusters = jax.vmap(tf.count_clusters, in_axes=(0, None))(xs, 1e-3)
    clustered = jax.vmap(tf.clustered_fraction, in_axes=(0, None))(xs, 1e-3)
    print(
        f"SA on S^2: n={options.n}, beta={options.beta}, t in [0, {options.t1}], "
        f"adaptive Tsit5 (rtol=atol=1e-6): {int(traj.stats['num_steps'])} steps, "
        f"{elapsed * 1e3:.1f} ms after compilation"
    )
    print(
        f"max sphere drift {float(tf.sphere_drift(xs)):.1e}; authors' Euler (dt=0.1) differs "
        f"by up to {float(jnp.abs(euler.xs - xs).max()):.2e} from the adaptive solution"
    )
    # Plain arrays for printing and drawing: indexing a JAX array dispatches (and, in a fresh
    # process, compiles or loads) a small program per index.
    xs, ts, energies, clusters, clustered = (
        np.asarray(a) for a in (xs, ts, energies, clusters, clustered)
    )
    print(f"{'t':>6} {'clusters':>9} {'clustered pairs':>16} {'energy':>10}")
    for k in range(0, len(ts), 25):
        print(
            f"{float(ts[k]):6.1f} {int(clusters[k]):9d} {float(clustered[k]):16.3f} "
            f"{float(energies[k]):10.4f}"
        )

    figure = plt.figure(figsize=(10, 4.5))
    ax = figure.add_subplot(1, 2, 1, projection="3d")
    sphere_axes(ax)
    for i in range(options.n):
        ax.plot(*xs[:, i].T, color="tab:blue", linewidth=0.6, alpha=0.7)
    ax.scatter(*xs[0].T, color="tab:blue", s=8, label="t = 0")
    ax.scatter(*xs[-1].T, color="tab:red", s=30, label=f"t = {options.t1:g}")
    ax.legend(loc="lower left")
    ax.set_title(f"SA trajectories, n={options.n}, β={options.beta:g}")
    ax = figure.add_subplot(1, 2, 2)
    ax.plot(ts, energies, color="k")
    ax.axhline(
        np.exp(options.beta) / (2 * options.beta),
        color="tab:red",
        linestyle="--",
        label="consensus e^β/(2β)",
    )
    ax.set_xlabel("t")
    ax.set_ylabel("E_β")
    ax.set_title("interaction energy (non-decreasing)")
    ax.legend()
    figure.tight_layout()
    figure.savefig(out / "trajectories.png", dpi=120)
    plt.close(figure)

    figure = plt.figure(figsize=(4.5, 4.5))
    ax = figure.add_subplot(projection="3d")
    sphere_axes(ax)
    points = ax.scatter(*xs[0].T, color="tab:red", s=14)
    title = ax.set_title("t = 0.0")

    def frame(k):
        points._offsets3d = tuple(xs[k].T)
        title.set_text(f"t = {float(ts[k]):.1f}, clusters = {int(clusters[k])}")
        return points, title

    FuncAnimation(figure, frame, frames=range(0, len(ts), 2)).save(
        out / "clustering.gif", writer=PillowWriter(fps=12)
    )
    plt.close(figure)
    print(f"wrote {out / 'trajectories.png'} and {out / 'clustering.gif'}")
    metastability(options, out)


def plateaus(ts, counts, n, min_decades=0.5):
    """Runs of consecutive (log-spaced) saves with one cluster count, 1 < count <= n/2 (after
    the first fast clustering), that last at least `min_decades` decades of time:
    [(count, first time, last time, the next count or None)]. The count is the same at every
    save of a run; between saves it is not observed."""
    runs, start = [], 0
    for k in range(1, len(counts) + 1):
        if k == len(counts) or counts[k] != counts[start]:
            first, last = float(ts[max(start, 1)]), float(ts[k - 1])
            if 1 < counts[start] <= n // 2 and last > 0 and np.log10(last / first) >= min_decades:
                after = int(counts[k]) if k < len(counts) else None
                runs.append((int(counts[start]), first, last, after))
            start = k
    return runs


def metastability(options, out):
    """SA on the circle at larger β in log time: fast clustering, then a long plateau with a
    few clusters (a metastable state), then the next merge (docs/mathematics.md §4.12)."""
    n, beta = options.meta_n, options.meta_beta
    x0 = tf.sample_sphere(jax.random.key(options.seed), n, 2)
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-1, np.log10(options.meta_t1), 101)])
    start = time.perf_counter()
    traj = tf.solve(tf.SelfAttention(beta), x0, ts, max_steps=100_000)
    xs = np.asarray(traj.xs)
    elapsed = time.perf_counter() - start
    counts = np.asarray(jax.vmap(tf.count_clusters, in_axes=(0, None))(traj.xs, 1e-3))
    rescaled = np.asarray(jax.vmap(lambda x: tf.energy(x, beta, rescaled=True))(traj.xs))
    ratio = rescaled * 2 * beta  # E_β / E_β(consensus): e^{-β}E_β over its consensus 1/(2β)
    ts = np.asarray(ts)
    if not bool(traj.succeeded):
        print(f"metastability demo: the solve failed ({traj.result}); no plateau reported")
        return
    found = plateaus(ts, counts, n)
    print(
        f"\nMetastability: SA on the circle, n={n}, beta={beta:g}, t in [0, {options.meta_t1:g}] "
        f"(log-spaced saves): {int(traj.stats['num_steps'])} steps, {elapsed:.1f} s "
        "with compilation"
    )
    for count, first, last, after in found:
        then = f", then {after}" if after is not None else f" (to t1 = {options.meta_t1:g})"
        print(
            f"plateau: {count} clusters at every save from t = {first:.3g} to t = {last:.3g} "
            f"({np.log10(last / first):.1f} decades of time){then}"
        )
    print(f"{'t':>9} {'clusters':>9} {'E/E_consensus':>14}")
    for k in [0, *range(10, len(ts), 10)]:
        print(f"{ts[k]:9.3g} {int(counts[k]):9d} {ratio[k]:14.4f}")

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    later = ts > 0
    # Angles measured from the last saved mean direction (the consensus if reached), so that
    # merging clusters meet at 0 instead of 2π apart.
    points = xs[:, :, 0] + 1j * xs[:, :, 1]
    reference = points[-1].mean()
    angles = np.angle(points * np.conj(reference / abs(reference)))
    left.plot(ts[later], angles[later], lw=0.9)
    left.set(xscale="log", xlabel="$t$", ylabel=r"angle $\theta_i(t)$ from the last mean")
    left.set_title(rf"SA on the circle, $n = {n}$, $\beta = {beta:g}$", fontsize=10)
    middle.step(ts[later], counts[later], where="post", color="k")
    middle.set(xscale="log", xlabel="$t$", ylabel="number of clusters")
    right.plot(ts[later], ratio[later], color="tab:red")
    right.axhline(1.0, color="0.5", ls="--", lw=1, label="consensus")
    right.set(
        xscale="log",
        xlabel="$t$",
        ylabel=r"$E_\beta(t)\,/\,E_\beta(\mathrm{consensus})$",
    )
    right.legend(loc="lower right")
    colours = ("tab:orange", "tab:green", "tab:blue", "tab:purple")
    for (count, first, last, _), colour in zip(found, colours * len(found), strict=False):
        for ax in (left, middle, right):
            ax.axvspan(first, last, color=colour, alpha=0.15)
        middle.text(np.sqrt(first * last), count + 0.3, f"{count} clusters", ha="center")
    if found:
        middle.set_title("shaded: metastable plateaus", fontsize=10)
        right.set_title("energy staircase: flat on each plateau", fontsize=10)
    figure.savefig(out / "metastability.png", dpi=120)
    plt.close(figure)
    print(f"wrote {out / 'metastability.png'}")


if __name__ == "__main__":
    main()

"""`make demo`: self-attention on S² (n = 64, β = 1, uniform starts), the paper's movie set-up.

Writes a PNG of the trajectories and energy, a GIF of the particles, and prints cluster statistics.
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


if __name__ == "__main__":
    main()

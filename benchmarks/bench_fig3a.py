"""Fig. 3(a) workload (SA, n = 32, d = 2, β grid × starts, t ∈ [0, 30]) against the peers.

Peers, same machine, same run:
- the authors' scheme restated in PyTorch (batched, float64, x ← normalize(x + η A x), η = 0.1;
  docs/mathematics.md §M15), statistic at the 200 checkpoints;
- torchdiffeq dopri5 on the projected field (one adaptive step for the whole batch).
Ours: `tf.solve` (adaptive, per-system steps) vmapped over the batch, observing only the
statistic (fraction of pairs with <x_i, x_j> >= 1 - δ) at the 200 checkpoints.

Accuracy of each setting on the exact orthonormal-start problem (n = 32, d = 32, β = 4,
Theorem 6.8): error = max over t of |Gram off-diagonal - γ(t)|, γ from
`transformer_flows.theory.equiangular_cosine` ((6.9), float64, ~1e-11). Work–precision:
workload time against that error.

    python benchmarks/bench_fig3a.py [--betas 16 --starts 64 --repeats 3]
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, report, table, time_call  # noqa: E402
from torchdiffeq import odeint  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows import theory  # noqa: E402

N, D, T1, DELTA, EXACT_BETA = 32, 2, 30.0, 1e-3, 4.0
CHECKPOINTS = np.linspace(0.0, T1, 200)
EXACT_TIMES = np.linspace(0.0, T1, 61)  # multiples of every Euler step used below
torch.set_grad_enabled(False)


# ----------------------------------------------------------------------------- statistic
def clustered_fraction(x):
    """Fraction of ordered pairs i != j with <x_i, x_j> >= 1 - δ (JAX or torch, (..., n, d))."""
    if isinstance(x, jax.Array):
        return tf.clustered_fraction(x, DELTA)
    n = x.shape[-2]
    return ((x @ x.transpose(-1, -2) >= 1 - DELTA).sum((-1, -2)) - n) / (n * (n - 1))


# ----------------------------------------------------------------------------- exact problem
def gamma_reference(times, beta=EXACT_BETA, n=N):
    """γ_β(t) of (6.9) from `theory.equiangular_cosine` (float64 here, ~1e-11 accurate)."""
    return np.asarray(theory.equiangular_cosine(times, n, beta, "SA"))


def exact_error(xs, times=EXACT_TIMES):
    """max over t and i != j of |<x_i(t), x_j(t)> - γ(t)| for states xs (T, n, d)."""
    xs = np.asarray(xs, dtype=np.float64)
    xs = xs / np.linalg.norm(xs, axis=-1, keepdims=True)
    gram = np.einsum("tid,tjd->tij", xs, xs)
    off = ~np.eye(xs.shape[1], dtype=bool)
    return float(np.max(np.abs(gram[:, off] - gamma_reference(times)[:, None])))


# ----------------------------------------------------------------------------- ours (JAX)
SOLVERS = {"tsit5": diffrax.Tsit5, "bosh3": diffrax.Bosh3, "dopri5": diffrax.Dopri5}


def ours(solver: str, tol: float, dtype, chunk: int | None = None):
    """jitted (betas, x0) -> statistic (B, 200) with our adaptive solve."""
    ts = jnp.asarray(CHECKPOINTS, dtype)

    def one(beta, x0):
        return tf.solve(
            tf.SelfAttention(beta),
            x0,
            ts,
            solver=SOLVERS[solver](),
            rtol=tol,
            atol=tol,
            observe=clustered_fraction,
            max_steps=4096,
        ).observed

    if chunk is None:
        return jax.jit(jax.vmap(one))
    return jax.jit(lambda b, x: tf.sharded_map(one, b, x, chunk_size=chunk, order=b))


def ours_euler(eta: float, dtype):
    ts = jnp.asarray(CHECKPOINTS, dtype)

    def one(beta, x0):
        return tf.solve(
            tf.SelfAttention(beta),
            x0,
            ts,
            solver=tf.NormalizedEuler(),
            dt0=eta,
            observe=clustered_fraction,
            max_steps=int(T1 / eta) + 2,
        ).observed

    return jax.jit(jax.vmap(one))


def ours_exact(solver: str, tol: float, dtype) -> float:
    x0 = tf.orthonormal_tokens(N, N).astype(dtype)
    ts = jnp.asarray(EXACT_TIMES, dtype)
    if solver == "euler":
        xs = tf.solve(
            tf.SelfAttention(jnp.asarray(EXACT_BETA, dtype)),
            x0,
            ts,
            solver=tf.NormalizedEuler(),
            dt0=tol,
            max_steps=int(T1 / tol) + 2,
        ).xs
    else:
        xs = tf.solve(
            tf.SelfAttention(jnp.asarray(EXACT_BETA, dtype)),
            x0,
            ts,
            solver=SOLVERS[solver](),
            rtol=tol,
            atol=tol,
            max_steps=4096,
        ).xs
    return exact_error(xs)


# ----------------------------------------------------------------------------- peers (torch)
def torch_euler(betas, x, eta: float, marks_at=CHECKPOINTS, return_states=False):
    """The authors' update, batched: A = softmax(β X Xᵀ); X ← normalize(X + η A X)."""
    steps = int(round(T1 / eta))
    # The step whose time label is nearest to each checkpoint (several checkpoints can share
    # one step when η is coarse).
    marks = np.round(np.asarray(marks_at) / eta).astype(int)
    recorded = {}
    for k in range(steps + 1):
        if k in marks:
            recorded[k] = x.clone() if return_states else clustered_fraction(x)
        if k == steps:
            break
        weights = torch.softmax(betas[:, None, None] * (x @ x.transpose(1, 2)), dim=-1)
        x = x + eta * (weights @ x)
        x = x / x.norm(dim=-1, keepdim=True)
    return torch.stack([recorded[k] for k in marks], 1)


def torch_field(betas):
    def field(t, x):
        mixed = torch.softmax(betas[:, None, None] * (x @ x.transpose(1, 2)), dim=-1) @ x
        return mixed - (mixed * x).sum(-1, keepdim=True) * x

    return field


def torch_dopri5(betas, x, tol: float, times=CHECKPOINTS, return_states=False):
    t = torch.as_tensor(times, dtype=x.dtype)
    xs = odeint(torch_field(betas), x, t, rtol=tol, atol=tol, method="dopri5")
    xs = xs / xs.norm(dim=-1, keepdim=True)
    return xs[:, 0] if return_states else clustered_fraction(xs).T


def torch_exact(method: str, setting: float) -> float:
    x0 = torch.tensor(np.array(tf.orthonormal_tokens(N, N)), dtype=torch.float64)[None]
    betas = torch.tensor([EXACT_BETA], dtype=torch.float64)
    if method == "euler":
        xs = torch_euler(betas, x0, setting, marks_at=EXACT_TIMES, return_states=True)[0]
    else:
        xs = torch_dopri5(betas, x0, setting, times=EXACT_TIMES, return_states=True)
    return exact_error(xs.numpy())


# ----------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", type=int, default=16, help="β grid size (paper: 90)")
    parser.add_argument("--starts", type=int, default=64, help="starts per β (paper: 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer settings (smoke run)")
    args = parser.parse_args()

    beta_grid = np.linspace(0.1, 9.0, args.betas)
    betas = np.repeat(beta_grid, args.starts)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((betas.size, N, D))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)

    rows, points, curves = [], [], {}

    def record(name, family, seconds, compile_s, error, P):
        curves[name] = np.asarray(P, dtype=np.float64)
        rows.append([name, seconds, compile_s, error])
        points.append((family, name, seconds, error))
        print(
            f"{name:40s} {seconds:8.3f} s  (first call {compile_s:.2f} s)  error {error:.2e}",
            flush=True,
        )

    # Peers.
    tb, tx = torch.as_tensor(betas), torch.as_tensor(x0)
    euler_steps = [0.1] if args.quick else [0.2, 0.1, 0.05]
    for eta in euler_steps:
        seconds, first = time_call(torch_euler, tb, tx, eta, repeats=args.repeats, warmup=0)
        record(
            f"torch Euler+normalise η={eta} (f64)",
            "torch Euler",
            seconds,
            first,
            torch_exact("euler", eta),
            torch_euler(tb, tx, eta),
        )
    for tol in [1e-3] if args.quick else [1e-3, 1e-5]:
        # Slow (one step size for the whole batch): timed once, no repeats.
        start = time.perf_counter()
        P = torch_dopri5(tb, tx, tol)
        seconds = time.perf_counter() - start
        record(
            f"torchdiffeq dopri5 tol={tol:g} (f64)",
            "torchdiffeq dopri5",
            seconds,
            seconds,
            torch_exact("dopri5", tol),
            P,
        )

    # Ours.
    settings = (
        [("bosh3", 1e-2, jnp.float32, None)]
        if args.quick
        else [
            ("bosh3", 1e-2, jnp.float32, None),
            ("bosh3", 1e-2, jnp.float32, 256),
            ("bosh3", 1e-3, jnp.float32, None),
            ("tsit5", 1e-2, jnp.float32, None),
            ("tsit5", 1e-3, jnp.float32, None),
            ("tsit5", 1e-3, jnp.float64, None),
            ("tsit5", 1e-6, jnp.float64, None),
        ]
    )
    for solver, tol, dtype, chunk in settings:
        fn = ours(solver, tol, dtype, chunk)
        jb, jx = jnp.asarray(betas, dtype), jnp.asarray(x0, dtype)
        seconds, first = time_call(fn, jb, jx, repeats=args.repeats)
        how = "vmap" if chunk is None else f"sorted by β, chunks of {chunk}"
        record(
            f"ours {solver} tol={tol:g} ({jnp.dtype(dtype).name}, {how})",
            f"ours {solver} {jnp.dtype(dtype).name}",
            seconds,
            first,
            ours_exact(solver, tol, dtype),
            fn(jb, jx),
        )
    eta, dtype = 0.1, jnp.float64
    fn = ours_euler(eta, dtype)
    seconds, first = time_call(fn, jnp.asarray(betas), jnp.asarray(x0), repeats=args.repeats)
    record(
        f"ours NormalizedEuler η={eta} (f64)",
        "ours NormalizedEuler",
        seconds,
        first,
        ours_exact("euler", eta, dtype),
        fn(jnp.asarray(betas), jnp.asarray(x0)),
    )

    peer = next(r for r in rows if r[0].startswith("torch Euler") and "η=0.1 " in r[0])
    reference_curve = curves[peer[0]]
    for row in rows:
        row.append(peer[1] / row[1])
        row.append(float(np.mean(np.abs(curves[row[0]] - reference_curve))))
    headers = [
        "method",
        "workload s (median)",
        "first call s",
        "exact-problem error",
        "speed-up vs torch Euler η=0.1",
        "mean |P - P_torch Euler|",
    ]
    body = (
        f"Workload: {args.betas} β in [0.1, 9] × {args.starts} starts = {betas.size} systems, "
        f"n = {N}, d = {D}, 200 checkpoints on [0, {T1:g}], δ = {DELTA:g}; "
        f"repeats = {args.repeats} (torchdiffeq: 1). Exact problem: n = d = {N}, "
        f"β = {EXACT_BETA:g}, orthonormal start, error vs scipy (6.9).\n\n" + table(headers, rows)
    )
    report("bench_fig3a", "Fig. 3(a) workload vs PyTorch peers", body)
    plot(points)


def plot(points):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = sorted({p[0] for p in points})
    for family in families:
        mine = [p for p in points if p[0] == family]
        ax.plot([p[3] for p in mine], [p[2] for p in mine], "o-", label=family)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("error on the exact problem (n=32, β=4): max_t |Gram_ij − γ(t)|")
    ax.set_ylabel("Fig. 3(a) workload time [s]")
    ax.set_title("Work–precision, same machine, same run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "fig3a_work_precision.png")
    fig.savefig(path, dpi=120)
    print("wrote", path, time.strftime("%H:%M:%S"))


if __name__ == "__main__":
    main()

"""Fig. 3(a) workload (SA, n = 32, d = 2, β grid × starts, t ∈ [0, 30]) against the peers.

Peers, same machine, same run:
- the authors' scheme restated in PyTorch (batched, float64, x ← normalize(x + η A x), η = 0.1;
  docs/mathematics.md §M15), statistic at the 200 checkpoints;
- torchdiffeq dopri5 on the projected field (one adaptive step for the whole batch).
Ours: `tf.solve` (diffrax, adaptive, per-system steps) vmapped over the batch, and
`tf.solve_batch` (one lean while_loop over the batch, the same Tsit5/PI method), both
observing only the statistic (fraction of pairs with <x_i, x_j> >= 1 - δ) at the checkpoints.
Everything in float32 unless `--dtype float64`; the torch peers run in the same dtype.

Accuracy of each setting on the exact orthonormal-start problem (n = 32, d = 32, β = 4,
Theorem 6.8): error = max over t of |Gram off-diagonal - γ(t)|, γ from
`transformer_flows.theory.equiangular_cosine` ((6.9), float64, ~1e-11). Work–precision:
workload time against that error.

    python benchmarks/bench_fig3a.py [--betas 16 --starts 128 --times 31 --repeats 5]
    python benchmarks/bench_fig3a.py --profile   # where the time of one solve goes
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, block, report, table, time_stats  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows import theory  # noqa: E402

N, D, T1, DELTA, EXACT_BETA = 32, 2, 30.0, 1e-3, 4.0
CHECKPOINTS = np.linspace(0.0, T1, 31)  # set from --times in main()
EXACT_TIMES = np.linspace(0.0, T1, 61)  # multiples of every Euler step used below
torch.set_grad_enabled(False)


# ----------------------------------------------------------------------------- statistic
def clustered_fraction(x):
    """Fraction of ordered pairs i != j with <x_i, x_j> >= 1 - δ (JAX or torch, (..., n, d))."""
    n = x.shape[-2]
    if isinstance(x, jax.Array):
        # tf.clustered_fraction without its on-sphere check: under a vmapped diffrax loop the
        # save function also runs on lanes that are already finished, whose garbage states
        # trip the check (seen at Tsit5 1e-3 float32); the states saved are on the sphere.
        gram = sum(x[:, None, c] * x[None, :, c] for c in range(x.shape[-1]))
        return ((jnp.sum(gram >= 1 - DELTA) - n) / (n * (n - 1))).astype(x.dtype)
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


def lean(method: str, tol: float, dtype, save: str = "interpolate"):
    """jitted (betas, x0) -> statistic (B, T) with `tf.solve_batch` (one loop, whole batch)."""
    ts = jnp.asarray(CHECKPOINTS, dtype)

    def run(betas, x0):
        return tf.solve_batch(
            eqx.filter_vmap(tf.SelfAttention)(betas),
            x0,
            ts,
            batched_field=True,
            rtol=tol,
            atol=tol,
            method=method,
            save=save,
            observe=clustered_fraction,
            max_steps=4096,
        ).observed

    return jax.jit(run)


def lean_exact(method: str, tol: float, dtype, save: str = "interpolate") -> float:
    x0 = tf.orthonormal_tokens(N, N).astype(dtype)[None]
    ts = jnp.asarray(EXACT_TIMES, dtype)
    field = tf.SelfAttention(jnp.asarray(EXACT_BETA, dtype))
    out = tf.solve_batch(field, x0, ts, rtol=tol, atol=tol, method=method, save=save)
    return exact_error(out.xs[0])


# ----------------------------------------------------------------------------- peers (torch)
def torch_euler(betas, x, eta: float, marks_at=None, return_states=False):
    """The authors' update, batched: A = softmax(β X Xᵀ); X ← normalize(X + η A X)."""
    marks_at = CHECKPOINTS if marks_at is None else marks_at
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


def torch_dopri5(betas, x, tol: float, times=None, return_states=False):
    from torchdiffeq import odeint  # optional peer (`--dopri5`): pip install torchdiffeq

    times = CHECKPOINTS if times is None else times
    t = torch.as_tensor(times, dtype=x.dtype)
    xs = odeint(torch_field(betas), x, t, rtol=tol, atol=tol, method="dopri5")
    xs = xs / xs.norm(dim=-1, keepdim=True)
    return xs[:, 0] if return_states else clustered_fraction(xs).T


def torch_exact(method: str, setting: float, dtype=torch.float64) -> float:
    x0 = torch.tensor(np.array(tf.orthonormal_tokens(N, N)), dtype=dtype)[None]
    betas = torch.tensor([EXACT_BETA], dtype=dtype)
    if method == "euler":
        xs = torch_euler(betas, x0, setting, marks_at=EXACT_TIMES, return_states=True)[0]
    else:
        xs = torch_dopri5(betas, x0, setting, times=EXACT_TIMES, return_states=True)
    return exact_error(xs.numpy())


# ----------------------------------------------------------------------------- main
def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main():
    global CHECKPOINTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", type=int, default=16, help="β grid size (paper: 90)")
    parser.add_argument("--starts", type=int, default=128, help="starts per β (paper: 1024)")
    parser.add_argument("--times", type=int, default=31, help="checkpoints on [0, 30]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="fewer settings (smoke run)")
    parser.add_argument("--dopri5", action="store_true", help="add the torchdiffeq peer (slow)")
    parser.add_argument("--profile", action="store_true", help="where one solve's time goes")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the timed peers (1: its fastest on a loaded 2-core "
        "machine, where 2 threads spin-wait; the default-threads run is added once)",
    )
    args = parser.parse_args()
    CHECKPOINTS = np.linspace(0.0, T1, args.times)
    dtype = jnp.dtype(args.dtype)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]

    beta_grid = np.linspace(0.1, 9.0, args.betas)
    betas = np.repeat(beta_grid, args.starts)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((betas.size, N, D))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    jb, jx = jnp.asarray(betas, dtype), jnp.asarray(x0, dtype)
    if args.profile:
        profile(jb, jx, args.repeats)
        return

    rows, points, curves = [], [], {}

    def record(name, family, stats, error, P):
        curves[name] = np.asarray(P, dtype=np.float64)
        rows.append([name, stats["min"], stats["median"], stats["first"], error, stats["load"]])
        points.append((family, name, stats["median"], error))
        print(
            f"{name:44s} min {stats['min']:7.3f} s  median {stats['median']:7.3f} s  (first "
            f"call {stats['first']:.2f} s)  error {error:.2e}  load {stats['load']}",
            flush=True,
        )

    def timed(fn, *fargs, warmup=1):
        stats = time_stats(fn, *fargs, repeats=args.repeats, warmup=warmup)
        stats["load"] = load()
        return stats

    # Peers: the authors' scheme restated in torch, same dtype, batched.
    tb, tx = torch.as_tensor(betas, dtype=torch_dtype), torch.as_tensor(x0, dtype=torch_dtype)
    default_threads = torch.get_num_threads()
    if default_threads != args.torch_threads and not args.quick:
        start = time.perf_counter()
        P = torch_euler(tb, tx, 0.1)
        seconds = time.perf_counter() - start
        stats = {"min": seconds, "median": seconds, "first": float("nan"), "load": load()}
        record(f"torch Euler+normalise η=0.1, {default_threads} threads (once)", "torch 2t",
               stats, torch_exact("euler", 0.1, torch_dtype), P)  # fmt: skip
    torch.set_num_threads(args.torch_threads)
    for eta in [0.1] if args.quick else [0.2, 0.1, 0.05]:
        record(
            f"torch Euler+normalise η={eta}",
            "torch Euler",
            timed(torch_euler, tb, tx, eta, warmup=0),
            torch_exact("euler", eta, torch_dtype),
            torch_euler(tb, tx, eta),
        )
    for tol in [1e-5] if args.dopri5 else []:
        start = time.perf_counter()
        P = torch_dopri5(tb, tx, tol)
        seconds = time.perf_counter() - start
        stats = {"min": seconds, "median": seconds, "first": seconds, "load": load()}
        record(f"torchdiffeq dopri5 tol={tol:g} (once)", "torchdiffeq dopri5", stats,
               torch_exact("dopri5", tol, torch_dtype), P)  # fmt: skip

    # Ours: diffrax (vmapped tf.solve) and the lean loop (tf.solve_batch), same tolerances.
    tolerances = [1e-4] if args.quick else [1e-3, 3e-4, 1e-4, 3e-5]
    for tol in tolerances:
        fn = ours("tsit5", tol, dtype)
        record(f"diffrax Tsit5 tol={tol:g} (vmap)", "diffrax Tsit5", timed(fn, jb, jx),
               ours_exact("tsit5", tol, dtype), fn(jb, jx))  # fmt: skip
        fn = lean("tsit5", tol, dtype)
        record(f"lean Tsit5 tol={tol:g} (solve_batch)", "lean Tsit5", timed(fn, jb, jx),
               lean_exact("tsit5", tol, dtype), fn(jb, jx))  # fmt: skip
    extra = [] if args.quick else [("tsit5", 1e-4, "clip"), ("bosh3", 1e-4, "interpolate"),
                                   ("bosh3", 1e-5, "interpolate")]  # fmt: skip
    for method, tol, save in extra:
        fn = lean(method, tol, dtype, save)
        name = f"lean {method.capitalize()} tol={tol:g} ({save})"
        record(name, f"lean {method.capitalize()} {save}", timed(fn, jb, jx),
               lean_exact(method, tol, dtype, save), fn(jb, jx))  # fmt: skip

    peer = next(r for r in rows if r[0] == "torch Euler+normalise η=0.1")
    peer[0] += f" ({args.torch_threads} thread{'s' if args.torch_threads > 1 else ''})"
    figure = next(r for r in rows if r[0].startswith("diffrax Tsit5 tol=0.0001"))
    curves[peer[0]] = curves.pop("torch Euler+normalise η=0.1")
    for row in rows:
        row.append(peer[2] / row[2])
        row.append(peer[1] / row[1])
        diff = np.abs(curves[row[0]] - curves[figure[0]])
        row.append(f"{diff.mean():.2g} / {diff.max():.2g}")
    headers = [
        "method",
        "min s",
        "median s",
        "first call s (compile)",
        "equiangular error",
        "load avg (1/5/15 min)",
        "speed-up vs torch Euler η=0.1 (median)",
        "(min)",
        "mean / max |P - P_diffrax 1e-4|",
    ]
    body = (
        f"Workload: {args.betas} β in [0.1, 9] × {args.starts} starts = {betas.size} systems, "
        f"n = {N}, d = {D}, {args.times} checkpoints on [0, {T1:g}], δ = {DELTA:g}, "
        f"{args.dtype} everywhere (torch too); {args.repeats} timed repeats after one untimed "
        f"call (torch: none). Equiangular error: n = d = {N}, β = {EXACT_BETA:g}, orthonormal "
        f"start, max_t |Gram_ij - γ(t)| with γ from theory.equiangular_cosine (6.9).\n\n"
        + table(headers, rows)
    )
    report("bench_fig3a", "Fig. 3(a) workload: lean loop, diffrax, PyTorch peers", body)
    plot(points)


def profile(jb, jx, repeats):
    """Where the time of the Tsit5 1e-4 solve goes: the same number of field evaluations
    alone (a fori_loop of 6 evaluations per step, steps = the solve's loop trips) against
    the diffrax and lean solves; process CPU time and wall time, minimum of `repeats`."""
    dtype = jx.dtype
    ts = jnp.asarray(CHECKPOINTS, dtype)
    steps = jax.jit(
        lambda b, x: tf.solve_batch(
            eqx.filter_vmap(tf.SelfAttention)(b), x, ts, batched_field=True, rtol=1e-4,
            atol=1e-4, max_steps=4096,
        )
    )(jb, jx)  # fmt: skip
    trips = int(steps.num_steps.max())
    print(f"loop trips (max steps over the batch) {trips}, mean steps "
          f"{float(steps.num_steps.mean()):.1f}, mean rejected "
          f"{float(steps.num_rejected_steps.mean()):.2f}")  # fmt: skip

    def evaluations(b, x):
        def field(y):
            return jax.vmap(lambda bb, yy: tf.SelfAttention(bb)(0.0, yy))(b, y)

        def body(i, y):
            for _ in range(6):
                y = tf.normalize(y + 1e-3 * field(y))
            return y

        return jax.lax.fori_loop(0, trips, body, x)

    def observables(b, x):
        def body(i, y):
            return tf.normalize(y + 1e-3 * jax.vmap(clustered_fraction)(y)[:, None, None])

        return jax.lax.fori_loop(0, trips, body, x)

    torch.set_num_threads(1)
    tb = torch.as_tensor(np.asarray(jb))
    tx = torch.as_tensor(np.asarray(jx))
    candidates = {
        f"torch Euler η=0.1, 1 thread ({int(round(T1 / 0.1))} evaluations)": (
            lambda b, x: torch_euler(tb, tx, 0.1)
        ),
        f"{6 * trips} batched field evaluations alone": jax.jit(evaluations),
        f"{trips} batched observables alone": jax.jit(observables),
        "diffrax Tsit5 1e-4 solve": ours("tsit5", 1e-4, dtype),
        "lean Tsit5 1e-4 solve": lean("tsit5", 1e-4, dtype),
    }
    for fn in candidates.values():
        block(fn(jb, jx))
    results = {name: ([], []) for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():  # interleaved: the same load for each
            wall, cpu = time.perf_counter(), time.process_time()
            block(fn(jb, jx))
            results[name][0].append(time.perf_counter() - wall)
            results[name][1].append(time.process_time() - cpu)
    rows = [[name, min(w), min(c), load()] for name, (w, c) in results.items()]
    body = (
        f"{jb.shape[0]} systems, {jx.dtype.name}, {len(CHECKPOINTS)} checkpoints; loop trips "
        f"{trips}; minimum of {repeats} interleaved repeats.\n\n"
        + table(["what", "wall s", "process CPU s", "load avg"], rows)
    )
    report("bench_fig3a", "Fig. 3(a) solve: field evaluations vs the whole solve", body)


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

"""Re-measure BENCHMARKS.md's tables with the one-core method of issue 22, in one command.

Method (every table): the process pins itself to one core (`--core`, as `taskset -c 0`),
XLA runs single-threaded (XLA_FLAGS `--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`, set here before JAX starts) and so does torch
(`torch.set_num_threads(1)`); every side of a table runs in the same process, compiled
first (compile excluded), then timed in interleaved rounds (side A, B, C, A, B, C, ...) with
`block_until_ready`; the figure is the minimum of the process CPU time (`time.process_time`)
over the rounds, which a loaded machine disturbs least. Beside every time: the side's error
against a float64 reference (what the reference is, per table).

Each benchmark writes one row per side to benchmarks/results/remeasure_<name>.json with the
git commit, machine, load averages and versions, and the Markdown tables are printed from
those files, so a table can be regenerated after `solve_batch` or `attend` change:

    PYTHONPATH=.:benchmarks python benchmarks/remeasure.py            # every table
    PYTHONPATH=.:benchmarks python benchmarks/remeasure.py --quick    # toy sizes, a check
    PYTHONPATH=.:benchmarks python benchmarks/remeasure.py --only fig3a accuracy
    PYTHONPATH=.:benchmarks python benchmarks/remeasure.py --render   # tables from the JSON

Default sizes are those the tables state (Fig. 3(a): 16 β × 128 starts = 2048 systems).
Cost on the shared 2-core machine at load ~20: `--only fig3a accuracy throughput` 26 min wall
on core 0 beside `--only masks span scaling_n --core 1` 25 min on core 1 (a few minutes of
CPU each: the rest is waiting for the loaded core); `--quick` about 10 min. torch and
torchdiffeq come from the `bench` extra (without torchdiffeq its row is left out and the
table says so).
"""

import argparse
import os
import sys

BENCHMARKS = ("fig3a", "throughput", "accuracy", "scaling_n", "span", "masks")
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (a check, not a table)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--core", type=int, default=0, help="the one core to pin to")
    parser.add_argument("--render", action="store_true", help="print tables from the JSON only")
    parser.add_argument(
        "--results",
        default=os.environ.get("TF_BENCH_RESULTS")
        or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    )
    return parser.parse_args(argv)


ARGS = _arguments() if __name__ == "__main__" else None
if ARGS is not None and not ARGS.render:
    # Before JAX and torch start their thread pools: one core, one thread each.
    if ONE_THREAD_XLA not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the method is about one CPU core
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.sched_setaffinity(0, {ARGS.core})

import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402

SIDES_NOTE = "1 core; XLA 1 thread; torch 1 thread"


# ----------------------------------------------------------------------------- bookkeeping
def _git(*args) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def environment() -> dict:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return {
        "commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes to the library itself (benchmarks and docs do not count).
        "library_dirty": bool(_git("status", "--porcelain", "--", "transformer_flows")),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{names[0] if names else platform.machine()}, {len(names)} logical cores",
        "affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": {
            name: _version(name) for name in ("jax", "jaxlib", "diffrax", "torch", "torchdiffeq")
        },
        "command": " ".join(["python", *sys.argv]),
    }


def block(tree):
    import jax

    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return tree


def interleaved(sides: dict, rounds: int) -> dict:
    """{name: {"compile_cpu_s", "cpu_s", "cpu_s_median", "wall_s", "output"}} for
    sides {name: zero-argument callable}: one untimed call each (compile), then `rounds`
    rounds calling every side in turn; minima of process CPU time and of wall time."""
    out = {}
    for name, fn in sides.items():
        cpu = time.process_time()
        out[name] = {"output": block(fn())}
        out[name]["compile_cpu_s"] = time.process_time() - cpu
        out[name]["cpu"], out[name]["wall"] = [], []
        print(f"  first call {name}: {out[name]['compile_cpu_s']:.2f} s CPU", flush=True)
    for r in range(rounds):
        for name, fn in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            block(fn())
            out[name]["cpu"].append(time.process_time() - cpu)
            out[name]["wall"].append(time.perf_counter() - wall)
        print(f"  round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)
    for stats in out.values():
        stats["cpu_s"] = min(stats["cpu"])
        stats["cpu_s_median"] = statistics.median(stats["cpu"])
        stats["wall_s"] = min(stats.pop("wall"))
        stats.pop("cpu")
    return out


def save(name: str, meta: dict, rows: list[dict], notes: str, base: str | None) -> None:
    meta = meta | {"load_end": list(os.getloadavg())}
    os.makedirs(ARGS.results, exist_ok=True)
    path = os.path.join(ARGS.results, f"remeasure_{name}{'_quick' if ARGS.quick else ''}.json")
    with open(path, "w") as f:
        json.dump({"benchmark": name, "meta": meta, "notes": notes, "base": base, "rows": rows},
                  f, indent=1)  # fmt: skip
    print(f"wrote {path}")
    print(render(path))


# ----------------------------------------------------------------------------- rendering
def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:
            return "—"
        return f"{value:.3g}"
    return str(value)


def render(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    meta, rows = data["meta"], data["rows"]
    base = next((r for r in rows if r["side"] == data["base"]), None)
    keys = ["side", "threads", "cpu_s", "cpu_s_median", "compile_cpu_s"]
    extra = [k for k in rows[0] if k not in keys and k not in ("wall_s", "library")]
    headers = ["side", "threads", "CPU s (min)", "CPU s (median)"]
    if base is not None:
        headers.append(f"vs {base['side']} ({base['threads']})")
    headers += extra + ["first call CPU s"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["side"], row["threads"], _fmt(row["cpu_s"]), _fmt(row["cpu_s_median"])]
        if base is not None:
            ratio = row["cpu_s"] / base["cpu_s"]
            cells.append(f"{ratio:.2f}× the time" if ratio >= 1 else f"{1 / ratio:.2f}× faster")
        cells += [_fmt(row.get(k)) for k in extra] + [_fmt(row["compile_cpu_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    load = f"{meta['load_start'][0]:.1f} → {meta['load_end'][0]:.1f}"
    dirty = " + uncommitted library changes" if meta.get("library_dirty") else ""
    head = (
        f"### `{data['benchmark']}` (git {meta['commit'][:10]}{dirty}, {meta['utc']})\n\n"
        f"{meta['cpu']}; pinned to core(s) {meta['affinity']}; XLA_FLAGS=`{meta['xla_flags']}`; "
        f"load average (1 min) {load}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f"; `{meta['command']}`.\n\n{data['notes']}\n\n"
    )
    return head + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- shared problem
N, T1, DELTA, EXACT_BETA = 32, 30.0, 1e-3, 4.0


def statistic(x):
    """Clustered fraction of a (n, d) state (pairs i != j with <x_i, x_j> >= 1 - δ), for
    JAX and torch, after normalising (plain solvers drift off the sphere)."""
    import jax.numpy as jnp

    n = x.shape[-2]
    if hasattr(x, "detach"):  # torch
        x = x / x.norm(dim=-1, keepdim=True)
        return ((x @ x.transpose(-1, -2) >= 1 - DELTA).sum((-1, -2)) - n) / (n * (n - 1))
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    gram = sum(x[..., :, None, c] * x[..., None, :, c] for c in range(x.shape[-1]))
    return ((jnp.sum(gram >= 1 - DELTA, axis=(-1, -2)) - n) / (n * (n - 1))).astype(x.dtype)


def workload(num_betas: int, starts: int, d: int = 2, seed: int = 0):
    betas = np.repeat(np.linspace(0.1, 9.0, num_betas), starts)
    x = np.random.default_rng(seed).standard_normal((betas.size, N, d))
    return betas, x / np.linalg.norm(x, axis=-1, keepdims=True)


def sa_field_jax(beta, x):
    import jax

    scores = beta * (x @ x.T)
    mixed = jax.nn.softmax(scores, axis=-1) @ x
    return mixed - (mixed * x).sum(-1, keepdims=True) * x


def plain_diffrax(betas, x0, ts, tol, dtype, states: bool = False):
    """Tsit5 with a PI controller on the projected SA field, vmapped: diffrax alone."""
    import diffrax
    import jax
    import jax.numpy as jnp

    term = diffrax.ODETerm(lambda t, x, beta: sa_field_jax(beta, x))
    fn = (lambda t, y, args: y) if states else (lambda t, y, args: statistic(y))

    def one(beta, x):
        return diffrax.diffeqsolve(
            term, diffrax.Tsit5(), ts[0], ts[-1], 0.01, x, args=beta,
            saveat=diffrax.SaveAt(ts=ts, fn=fn), max_steps=4096,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        ).ys  # fmt: skip

    return jax.jit(jax.vmap(one)), (jnp.asarray(betas, dtype), jnp.asarray(x0, dtype))


def tf_solve(betas, x0, ts, tol, dtype, solver="tsit5", chunk=None, states=False):
    import diffrax
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    method = {"tsit5": diffrax.Tsit5, "bosh3": diffrax.Bosh3}[solver]

    def one(beta, x):
        out = tf.solve(
            tf.SelfAttention(beta), x, ts, solver=method(), rtol=tol, atol=tol,
            observe=None if states else statistic, max_steps=4096,
        )  # fmt: skip
        return out.xs if states else out.observed

    args = (jnp.asarray(betas, dtype), jnp.asarray(x0, dtype))
    if chunk is None:
        return jax.jit(jax.vmap(one)), args
    size, order = chunk
    if order == "sorted":
        fn = jax.jit(lambda b, x: tf.sharded_map(one, b, x, chunk_size=size, order=b))
    else:
        fn = jax.jit(lambda b, x: tf.sharded_map(one, b, x, chunk_size=size))
    return fn, args


def tf_solve_batch(betas, x0, ts, tol, dtype, states=False):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    def run(b, x):
        out = tf.solve_batch(
            eqx.filter_vmap(tf.SelfAttention)(b), x, ts, batched_field=True, rtol=tol,
            atol=tol, observe=None if states else statistic, max_steps=4096,
        )  # fmt: skip
        return out.xs if states else out.observed

    return jax.jit(run), (jnp.asarray(betas, dtype), jnp.asarray(x0, dtype))


def torch_euler(betas, x, ts, eta, states=False):
    """The authors' scheme, batched: X <- normalize(X + η softmax(β X Xᵀ) X); the step whose
    time label is nearest each save time is recorded."""
    import torch

    marks = np.round(np.asarray(ts) / eta).astype(int)
    recorded = {}
    for k in range(int(marks.max()) + 1):
        if k in marks:
            recorded[k] = x.clone() if states else statistic(x)
        weights = torch.softmax(betas[:, None, None] * (x @ x.transpose(1, 2)), dim=-1)
        x = x + eta * (weights @ x)
        x = x / x.norm(dim=-1, keepdim=True)
    return torch.stack([recorded[k] for k in marks], 1)


def torch_dopri5(betas, x, ts, tol, states=False):
    import torch
    from torchdiffeq import odeint

    def field(t, y):
        mixed = torch.softmax(betas[:, None, None] * (y @ y.transpose(1, 2)), dim=-1) @ y
        return mixed - (mixed * y).sum(-1, keepdim=True) * y

    ys = odeint(field, x, torch.as_tensor(ts, dtype=x.dtype), rtol=tol, atol=tol,
                method="dopri5")  # fmt: skip
    ys = ys.transpose(0, 1)  # (B, T, n, d)
    return ys if states else statistic(ys)


def equiangular_error(xs, times) -> float:
    """max over t and i != j of |<x_i, x_j> - γ(t)|, γ of (6.9) (float64), for (T, n, d)."""
    from transformer_flows import theory

    xs = np.asarray(xs, dtype=np.float64)
    xs = xs / np.linalg.norm(xs, axis=-1, keepdims=True)
    gram = np.einsum("tid,tjd->tij", xs, xs)
    gamma = np.asarray(theory.equiangular_cosine(np.asarray(times), N, EXACT_BETA, "SA"))
    off = ~np.eye(N, dtype=bool)
    return float(np.max(np.abs(gram[:, off] - gamma[:, None])))


def exact_start():
    import transformer_flows as tf

    return np.asarray(tf.orthonormal_tokens(N, N), dtype=np.float64)[None], np.array([EXACT_BETA])


def beta50_shift(P, Pref, betas_grid, starts) -> float:
    """max over save times of |Δ| of the β where the mean clustered fraction falls below 1/2
    (linear interpolation on the β grid; save times where either has no crossing skipped)."""
    from transformer_flows.experiment import level_crossing

    def levels(p):
        mean = np.asarray(p, dtype=np.float64).reshape(len(betas_grid), starts, -1).mean(1)
        return np.array([level_crossing(mean[:, t], betas_grid, 0.5) for t in range(mean.shape[1])])

    a, b = levels(P), levels(Pref)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else float("nan")


# ----------------------------------------------------------------------------- benchmarks
def bench_fig3a(meta, rounds):
    """Fig. 3(a) workload: the library against its peers at the figure setting."""
    import jax.numpy as jnp
    import torch

    num_betas, starts = (4, 16) if ARGS.quick else (16, 128)
    betas, x0 = workload(num_betas, starts)
    ts32 = jnp.linspace(0.0, T1, 31, dtype=jnp.float32)
    ts_np = np.linspace(0.0, T1, 31)
    tb, tx = torch.as_tensor(betas, dtype=torch.float32), torch.as_tensor(x0, dtype=torch.float32)
    f32 = jnp.float32
    jax_sides = {  # label: (builder, tolerance); the same builder gives the exact problem
        "`tf.solve` Tsit5 1e-4 (vmap; the figure setting)": (tf_solve, 1e-4),
        "`tf.solve_batch` Tsit5 1e-4 (default lanes)": (tf_solve_batch, 1e-4),
        "plain diffrax Tsit5 1e-4 (vmap, no library)": (plain_diffrax, 1e-4),
        "`tf.solve` Tsit5 3e-6 (from here down every tolerance meets ≤ 1e-4 equiangular)": (
            tf_solve,
            3e-6,
        ),
        "`tf.solve` Tsit5 1e-6 (meets ≤ 1e-4 equiangular)": (tf_solve, 1e-6),
    }
    sides = {}
    for label, (builder, tol) in jax_sides.items():
        fn, args = builder(betas, x0, ts32, tol, f32)
        sides[label] = lambda fn=fn, args=args: fn(*args)
    have_torchdiffeq = importlib.util.find_spec("torchdiffeq") is not None
    if have_torchdiffeq:  # the `bench` extra
        sides["torchdiffeq dopri5 1e-4"] = lambda: torch_dopri5(tb, tx, ts_np, 1e-4)
    sides["authors' torch Euler η = 0.1"] = lambda: torch_euler(tb, tx, ts_np, 0.1)
    with torch.no_grad():
        timed = interleaved(sides, rounds)

        # Errors: the workload against a float64 reference, and the equiangular problem.
        ref_fn, ref_args = tf_solve(betas, x0, jnp.asarray(ts_np), 1e-8, jnp.float64)
        Pref = np.asarray(ref_fn(*ref_args), dtype=np.float64)
        xe, be = exact_start()
        te = np.linspace(0.0, T1, 61)
        te32 = jnp.asarray(te, f32)
        ex32 = torch.as_tensor(xe, dtype=torch.float32)
        bt32 = torch.as_tensor(be, dtype=torch.float32)
        exact = {}
        for label, (builder, tol) in jax_sides.items():
            fn, args = builder(be, xe, te32, tol, f32, states=True)
            exact[label] = equiangular_error(fn(*args)[0], te)
        if have_torchdiffeq:
            exact["torchdiffeq dopri5 1e-4"] = equiangular_error(
                torch_dopri5(bt32, ex32, te, 1e-4, states=True)[0].numpy(), te
            )
        exact["authors' torch Euler η = 0.1"] = equiangular_error(
            torch_euler(bt32, ex32, te, 0.1, states=True)[0].numpy(), te
        )
    grid = np.linspace(0.1, 9.0, num_betas)
    rows = []
    for label, stats in timed.items():
        P = np.asarray(stats["output"], dtype=np.float64)
        library = "torch" if "torch" in label else "JAX"
        rows.append({
            "side": label, "library": library, "threads": "1 thread",
            "cpu_s": stats["cpu_s"], "cpu_s_median": stats["cpu_s_median"],
            "wall_s": stats["wall_s"], "compile_cpu_s": stats["compile_cpu_s"],
            "mean \\|ΔP\\| vs f64": float(np.abs(P - Pref).mean()),
            "max 50%-level shift in β vs f64": beta50_shift(P, Pref, grid, starts),
            "equiangular error (float32)": exact[label],
        })  # fmt: skip
    notes = (
        f"Fig. 3(a) workload: SA, Q = K = V = I, n = {N}, d = 2, {num_betas} β in [0.1, 9] × "
        f"{starts} Gaussian starts = {betas.size} systems, t ≤ {T1:g}, clustered fraction "
        f"(δ = {DELTA:g}) at 31 save times, float32 on every side; {rounds} interleaved rounds, "
        f"{SIDES_NOTE}. Float64 reference: `tf.solve` Tsit5 rtol = atol = 1e-8 in float64 on "
        "the same starts (mean |ΔP| over systems × save times; 50% level: the β where the mean "
        "over starts falls below 1/2, max over save times). Equiangular error: n = d = 32, "
        "β = 4, orthonormal start, max over 61 saves and pairs of |⟨x_i, x_j⟩ − γ(t)|, γ of "
        "(6.9) in float64, same method and dtype as the row. The torch Euler scheme records "
        "the step whose time label is nearest each save."
        + ("" if have_torchdiffeq else " torchdiffeq not installed: its row is missing.")
    )
    save("fig3a", meta, rows, notes, "`tf.solve` Tsit5 1e-4 (vmap; the figure setting)")


def bench_throughput(meta, rounds):
    """§2: many tiny systems, vmap against sharded_map chunks (Bosh3 1e-2 float32)."""
    import jax.numpy as jnp

    num_betas, starts = (4, 16) if ARGS.quick else (16, 64)
    betas, x0 = workload(num_betas, starts)
    ts = jnp.linspace(0.0, T1, 31, dtype=jnp.float32)
    variants = {
        "vmap": None,
        "`sharded_map` chunks of 64, sorted by β": (64, "sorted"),
        "`sharded_map` chunks of 256, sorted by β": (256, "sorted"),
        "`sharded_map` chunks of 64, batch order": (64, "batch"),
    }
    sides, settings = {}, [("bosh3", 1e-2), ("tsit5", 1e-4)]
    for solver, tol in settings:
        for name, chunk in variants.items():
            if chunk is not None and chunk[0] >= betas.size:
                continue
            fn, args = tf_solve(betas, x0, ts, tol, jnp.float32, solver=solver, chunk=chunk)
            sides[f"{solver.capitalize()} {tol:g}: {name}"] = lambda fn=fn, args=args: fn(*args)
    timed = interleaved(sides, rounds)
    ref_fn, ref_args = tf_solve(betas, x0, jnp.linspace(0.0, T1, 31), 1e-8, jnp.float64)
    Pref = np.asarray(ref_fn(*ref_args))
    grid = np.linspace(0.1, 9.0, num_betas)
    rows = []
    for label, stats in timed.items():
        P = np.asarray(stats["output"], dtype=np.float64)
        rows.append({
            "side": label, "library": "JAX", "threads": "1 thread",
            "cpu_s": stats["cpu_s"], "cpu_s_median": stats["cpu_s_median"],
            "wall_s": stats["wall_s"], "compile_cpu_s": stats["compile_cpu_s"],
            "mean \\|ΔP\\| vs f64": float(np.abs(P - Pref).mean()),
            "max 50%-level shift in β vs f64": beta50_shift(P, Pref, grid, starts),
        })  # fmt: skip
    notes = (
        f"Batching strategies on {betas.size} systems ({num_betas} β × {starts} starts; SA, "
        f"n = {N}, d = 2, t ≤ {T1:g}, 31 saves, float32); {rounds} interleaved rounds, "
        f"{SIDES_NOTE}. Float64 reference: `tf.solve` Tsit5 1e-8."
    )
    save("throughput", meta, rows, notes, "Bosh3 0.01: vmap")


def bench_accuracy(meta, rounds):
    """Item 6: the equiangular error and steps of `tf.solve` Tsit5 against the tolerance."""
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    xe, be = exact_start()
    te = np.linspace(0.0, T1, 61)
    tols = [1e-4, 1e-5] if ARGS.quick else [1e-4, 3e-5, 1e-5, 3e-6, 2e-6, 1e-6]
    rows = []
    for tol in tols:
        row = {"side": f"`tf.solve` Tsit5 rtol = atol = {tol:g}", "library": "JAX",
               "threads": "1 thread"}  # fmt: skip
        sides = {}
        for dtype in (jnp.float32, jnp.float64):

            @jax.jit
            def solve(x, ts, beta):
                return tf.solve(tf.SelfAttention(beta), x, ts, rtol=tol, atol=tol, max_steps=4096)

            def run(solve=solve, dtype=dtype):
                return solve(
                    jnp.asarray(xe[0], dtype),
                    jnp.asarray(te, dtype),
                    jnp.asarray(EXACT_BETA, dtype),
                )

            sides[jnp.dtype(dtype).name] = run
        timed = interleaved(sides, rounds)
        for name, stats in timed.items():
            out = stats["output"]
            row[f"{name} error"] = equiangular_error(out.xs, te)
            row[f"{name} steps"] = int(out.stats["num_steps"])
        row |= {k: timed["float32"][k] for k in ("cpu_s", "cpu_s_median", "wall_s",
                                                 "compile_cpu_s")}  # fmt: skip
        rows.append(row)
    notes = (
        "Equiangular problem: n = d = 32, β = 4, orthonormal start, t ≤ 30, 61 saves; error = "
        "max over saves and pairs of |⟨x_i, x_j⟩ − γ(t)|, γ of (6.9) in float64 (the "
        "reference); steps = accepted + rejected. Times are of the float32 solve of this one "
        f"system ({rounds} interleaved rounds, {SIDES_NOTE}); the cost of the tolerances on "
        "the Fig. 3(a) workload is in `fig3a`."
    )
    save("accuracy", meta, rows, notes, "`tf.solve` Tsit5 rtol = atol = 0.0001")


def _sdpa(tx):
    """The SA field with identity weights and β = 1 through torch's fused attention."""
    import torch

    mixed = torch.nn.functional.scaled_dot_product_attention(tx, tx, tx, scale=1.0)
    return (mixed - (mixed * tx).sum(-1, keepdim=True) * tx)[0, 0]


def bench_scaling_n(meta, rounds):
    """§3: one SA field evaluation at large n, d = 64, float32, identity weights."""
    import jax
    import jax.numpy as jnp
    import torch

    import transformer_flows as tf

    d, block_size, rows_checked = 64, 512, 64
    plan = [(256, "dense"), (1024, "dense"), (1024, "blockwise")]
    if not ARGS.quick:
        plan += [(4096, "dense"), (4096, "blockwise"), (16384, "blockwise"), (65536, "blockwise")]
    sides, inputs = {}, {}
    k = 2048 if not ARGS.quick else 512
    a = jax.random.normal(jax.random.key(1), (k, k), jnp.float32)
    matmul = jax.jit(lambda m: m @ m)
    sides[f"matmul {k}³ (the core's rate)"] = lambda: matmul(a)
    for n, kind in plan:
        x = tf.sample_sphere(jax.random.key(n), n, d).astype(jnp.float32)
        attention = tf.DenseAttention() if kind == "dense" else tf.BlockwiseAttention(block_size)
        field = tf.SelfAttention(1.0, attention=attention)
        fn = jax.jit(lambda x, field=field: field(0.0, x))
        inputs[f"n = {n}, {kind}"] = (n, x)
        sides[f"n = {n}, {kind}"] = lambda fn=fn, x=x: fn(x)
        if kind != "dense" or n == 256:
            # The PyTorch peer: its fused CPU attention (flash-style, no n x n buffer).
            tx = torch.as_tensor(np.asarray(x))[None, None]
            inputs[f"n = {n}, torch `scaled_dot_product_attention`"] = (n, x)
            sides[f"n = {n}, torch `scaled_dot_product_attention`"] = lambda tx=tx: _sdpa(tx)
    with torch.no_grad():
        timed = interleaved(sides, rounds)
    rows = []
    for label, stats in timed.items():
        library = "torch" if "torch" in label else "JAX"
        row = {"side": label, "library": library, "threads": "1 thread",
               "cpu_s": stats["cpu_s"], "cpu_s_median": stats["cpu_s_median"],
               "wall_s": stats["wall_s"], "compile_cpu_s": stats["compile_cpu_s"]}  # fmt: skip
        if label in inputs:
            n, x = inputs[label]
            flops = 2.0 * n * n * (d + d)
            xs = np.asarray(x, dtype=np.float64)
            q = xs[:rows_checked]
            s = q @ xs.T
            w = np.exp(s - s.max(1, keepdims=True))
            mixed = (w / w.sum(1, keepdims=True)) @ xs
            ref = mixed - (mixed * q).sum(-1, keepdims=True) * q
            got = np.asarray(stats["output"], dtype=np.float64)[:rows_checked]
            row["GFLOP/s"] = flops / stats["cpu_s"] / 1e9
            row[f"max error vs f64 (first {rows_checked} rows)"] = float(np.abs(got - ref).max())
        else:
            row["GFLOP/s"] = 2.0 * k**3 / stats["cpu_s"] / 1e9
            row[f"max error vs f64 (first {rows_checked} rows)"] = None
        rows.append(row)
    notes = (
        f"One `SelfAttention(1.0)` evaluation (identity weights), d = {d}, float32, dense or "
        f"`BlockwiseAttention({block_size})`, and torch's `scaled_dot_product_attention` "
        f"(scale 1, then the tangent projection) as the peer; GFLOP/s = 2·n²·2d / CPU s "
        f"(exponentials not counted), against a single-threaded float32 matmul in the same rounds; "
        f"{rounds} interleaved rounds, {SIDES_NOTE}. Error: float64 numpy evaluation of the "
        f"first {rows_checked} query rows against all keys. Peak memory: `bench_scaling_n.py`."
    )
    save("scaling_n", meta, rows, notes, None)


def bench_span(meta, rounds):
    """§4: cost against d at n = 32: direct solve vs `solve_in_span` (float64, Tsit5 1e-6)."""
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    batch = 8 if ARGS.quick else 64
    ds = [32, 128] if ARGS.quick else [32, 128, 1024]
    ts = jnp.linspace(0.0, 10.0, 50)

    def runner(reduce, tol):
        def one(x0):
            kwargs = dict(rtol=tol, atol=tol, observe=tf.clustered_fraction, max_steps=8192)
            if reduce:
                return tf.solve_in_span(
                    tf.SelfAttention(1.0), x0, ts, observe_in_span=True, **kwargs
                ).observed
            return tf.solve(tf.SelfAttention(1.0), x0, ts, **kwargs).observed

        return jax.jit(jax.vmap(one))

    sides, refs = {}, {}
    for d in ds:
        x0 = tf.sample_sphere(jax.random.key(d), batch * N, d).reshape(batch, N, d)
        direct, span = runner(False, 1e-6), runner(True, 1e-6)
        sides[f"d = {d}, direct `tf.solve`"] = lambda fn=direct, x=x0: fn(x)
        if d > N:
            sides[f"d = {d}, `solve_in_span`"] = lambda fn=span, x=x0: fn(x)
        refs[d] = (runner(True, 1e-10), x0)
    timed = interleaved(sides, rounds)
    reference = {d: np.asarray(fn(x)) for d, (fn, x) in refs.items()}
    rows = []
    for label, stats in timed.items():
        d = int(label.split(",")[0].split("=")[1])
        P = np.asarray(stats["output"])
        rows.append({
            "side": label, "library": "JAX", "threads": "1 thread",
            "cpu_s": stats["cpu_s"], "cpu_s_median": stats["cpu_s_median"],
            "wall_s": stats["wall_s"], "compile_cpu_s": stats["compile_cpu_s"],
            "max \\|ΔP\\| vs f64 1e-10": float(np.abs(P - reference[d]).max()),
        })  # fmt: skip
    notes = (
        f"n = {N}, batch of {batch} starts (vmap), SA β = 1, t ∈ [0, 10], 50 saves of the "
        "clustered fraction, Tsit5 rtol = atol = 1e-6, float64 (for d ≤ 32 `solve_in_span` is "
        f"`solve`); {rounds} interleaved rounds, {SIDES_NOTE}. Reference: `solve_in_span` at "
        "1e-10 in float64 (the reduction is exact: tests/test_span.py)."
    )
    save("span", meta, rows, notes, f"d = {N}, direct `tf.solve`")


def bench_masks(meta, rounds):
    """Masks: skipping masked key blocks (one SA evaluation, d = 64, block 512)."""
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    n, d, block_size = (1024, 64, 256) if ARGS.quick else (4096, 64, 512)
    window = block_size
    x = tf.sample_sphere(jax.random.key(0), n, d).astype(jnp.float32)
    i = np.arange(n)
    causal = i[None, :] <= i[:, None]
    masks = {  # (constructor keywords, the mask as a boolean matrix for the reference)
        "none": ({}, None),
        "causal": ({"causal": True}, causal),
        f"causal, window {window}": (
            {"causal": True, "window": window},
            causal & (i[:, None] - i[None, :] < window),
        ),
    }
    sides = {}
    for name, (keywords, mask) in masks.items():
        for skip in (True, False) if mask is not None else (True,):
            attention = tf.BlockwiseAttention(block_size, skip_masked=skip)
            field = tf.SelfAttention(1.0, attention=attention, **keywords)
            fn = jax.jit(lambda x, field=field: field(0.0, x))
            sides[f"{name}, {'skip' if skip else 'all blocks'}"] = lambda fn=fn: fn(x)
    timed = interleaved(sides, rounds)
    xs = np.asarray(x, dtype=np.float64)
    rows = []
    for label, stats in timed.items():
        mask = masks[label.rsplit(",", 1)[0]][1]
        rows_checked = np.r_[0:32, n - 32 : n]
        q = xs[rows_checked]
        s = q @ xs.T
        if mask is not None:
            s = np.where(mask[rows_checked], s, -np.inf)
        w = np.exp(s - s.max(1, keepdims=True))
        mixed = (w / w.sum(1, keepdims=True)) @ xs
        ref = mixed - (mixed * q).sum(-1, keepdims=True) * q
        got = np.asarray(stats["output"], dtype=np.float64)[rows_checked]
        rows.append({
            "side": label, "library": "JAX", "threads": "1 thread",
            "cpu_s": stats["cpu_s"], "cpu_s_median": stats["cpu_s_median"],
            "wall_s": stats["wall_s"], "compile_cpu_s": stats["compile_cpu_s"],
            "max error vs f64 (64 rows)": float(np.abs(got - ref).max()),
        })  # fmt: skip
    notes = (
        f"One SA evaluation, n = {n}, d = {d}, float32, identity weights, "
        f"`BlockwiseAttention({block_size})`; skip = `skip_masked=True` (default), all blocks "
        f"= `skip_masked=False`; {rounds} interleaved rounds, {SIDES_NOTE}. Error: float64 numpy "
        "evaluation of the first and last 32 query rows."
    )
    save("masks", meta, rows, notes, "none, skip")


def main():
    if ARGS.render:
        for name in ARGS.only:
            path = os.path.join(
                ARGS.results, f"remeasure_{name}{'_quick' if ARGS.quick else ''}.json"
            )
            if os.path.exists(path):
                print(render(path))
        return
    import jax
    import torch

    jax.config.update("jax_enable_x64", True)  # for the float64 references; sides are float32
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    rounds = ARGS.rounds or (2 if ARGS.quick else 5)
    for name in ARGS.only:
        print(f"== {name} ({time.strftime('%H:%M:%S')})", flush=True)
        globals()[f"bench_{name}"](environment(), rounds)


if __name__ == "__main__":
    main()

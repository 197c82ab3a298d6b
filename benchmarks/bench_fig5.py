"""Fig. 5 workload (issue 12, item 4): what bounds the d = 128 random-weight sweep.

SA, n = 32, d = 128, one (Q, K, V) draw per start from the four ensembles of
`configs/figure5.yaml`, Tsit5 rtol = atol = 1e-4 in float32, clustered fraction at the save
times; the solve is built exactly as `experiment/_program.py` builds it (logits as
<(KᵀQ)x_i, x_j>, identity keys, `solve(..., observe=...)`), vmapped over the starts of one
(ensemble, β) cell, which is what one sweep chunk holds.

Four parts, all in one process so that ratios are side by side:

1. rates: float32 matmul rate of this machine (2048³), and the d×d products of the field at
   the batch shape of a chunk: B distinct (32, 128) @ (128, 128) products (what a vmap over
   systems with their own V lowers to, a batched dot_general) against one
   (B·32, 128) @ (128, 128) product (what the same vmap lowers to when the systems share V).
2. field: one field evaluation (FLOPs counted from the products; exponentials not counted),
   standalone (one system) and vmapped over the B systems of a chunk.
3. solve: per (ensemble, β) cell the vmapped solve of B starts, before and after `solve`
   integrates the radial extension f(x/|x|) of the field (see `_solve._RadialExtension`):
   time (min and median of `--repeats`, compile reported apart), accepted/rejected steps
   (mean, max), the achieved GFLOP/s = 6 evaluations × steps × FLOPs / time (the vmapped loop
   runs max steps for all), and the share of the time that the field evaluations of those
   steps would take at the vmapped field's rate (the rest is the step machinery).
   Then two restructurings on the same starts: β grouped under shared weights, and the `qk`
   ensembles' field folded to one d×d product.
4. tolerance / stiffness: steps of the stiffest cell at rtol = atol 1e-3, 1e-4, 1e-5 (and
   Bosh3, whose real stability interval per evaluation is larger than Tsit5's), and the
   step size against the spectral radius of the ODE's Jacobian (power iteration) with both
   extensions, which says whether explicit Tsit5 is stability-limited there; P(clustered) at
   each tolerance against 1e-4 on the same starts.

Then the full-size estimate: 4 ensembles × 90 β × 1024 starts from the measured cells
(time per system interpolated in β), before, after, and with the best restructuring.

    PYTHONPATH=.:benchmarks python benchmarks/bench_fig5.py            # ~10 min here
    PYTHONPATH=.:benchmarks python benchmarks/bench_fig5.py --quick    # ~2 min
    PYTHONPATH=.:benchmarks python benchmarks/bench_fig5.py --reference goe:wishart@9 \
        ginibre:qk@1 goe:qk@1 ginibre:ginibre@9     # accuracy before/after, ~10 min here
"""

import argparse
import contextlib
import functools
import sys

import diffrax
import jax

if "--reference" in sys.argv:  # the float64 reference needs x64 before any array exists
    jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from _common import block, machine, report, table, time_stats

import transformer_flows as tf
import transformer_flows._solve as _solve_module
import transformer_flows.experiment  # noqa: F401 (registers the ensembles)
from transformer_flows._sphere import normalize
from transformer_flows.experiment._registry import WEIGHTS as REGISTRY

N, D = 32, 128
ENSEMBLES = ("ginibre:ginibre", "goe:wishart", "ginibre:qk", "goe:qk")


def field_flops(n: int, d: int) -> int:
    """FLOPs of one SA field evaluation with logits <(KᵀQ)x_i, x_j>: queries x Bᵀ (n d²
    multiply-adds), scores (n² d), weights @ x (n² d), mixed Vᵀ (n d²); the softmax's n²
    exponentials and the projection's O(n d) are not counted."""
    return 2 * (2 * n * d * d + 2 * n * n * d)


def draws(ensemble: str):
    return REGISTRY[ensemble].draw


def system(ensemble: str, start, dtype=jnp.float32):
    """Start s of a sweep: tokens and weights exactly as `_program.one` draws them (seed 0)."""
    base = jax.random.key(0)
    init_key, weight_key = jax.random.split(jax.random.fold_in(base, start))
    x0 = normalize(tf.sample_sphere(init_key, N, D, dtype=jnp.float32).astype(dtype))
    Q, K, V = draws(ensemble)(weight_key, d=D, dtype=jnp.float32)
    if V is None:
        V = jnp.eye(D, dtype=jnp.float32)
    return x0, (jnp.swapaxes(K, -1, -2) @ Q).astype(dtype), V.astype(dtype)


@contextlib.contextmanager
def own_extension():
    """`solve` as it was before issue 12 item 4: the ODE term is the field itself, P_x a(x)
    off the sphere, instead of its radial extension f(x/|x|). Compiled caches are cleared on
    both sides so that no program traced under one setting serves the other."""

    def clear():
        jax.clear_caches()
        make_solve.cache_clear()
        make_solve_variant.cache_clear()

    clear()
    saved = _solve_module._RadialExtension
    _solve_module._RadialExtension = lambda field: field
    try:
        yield
    finally:
        _solve_module._RadialExtension = saved
        clear()


def make_field(beta, B, V):
    return tf.SelfAttention(beta, Q=B, V=V, attention=tf.DenseAttention())


def solver_args(t1: float, num: int, rtol: float):
    return dict(
        ts=jnp.linspace(0.0, t1, num, dtype=jnp.float32),
        solver=None,
        rtol=rtol,
        atol=rtol,
        max_steps=65536,
        throw=False,
    )


def clustered(x, delta):
    """`tf.clustered_fraction` without its on-sphere check: a solve that fails (NaN, or
    diffrax's inf padding after max_steps) gives NaN here instead of stopping the benchmark."""
    g = x @ x.T
    off = ~jnp.eye(x.shape[0], dtype=bool)
    p = jnp.sum((g >= 1 - delta) & off) / (x.shape[0] * (x.shape[0] - 1))
    return jnp.where(jnp.all(jnp.isfinite(x)), p, jnp.nan).astype(x.dtype)


@functools.lru_cache
def make_solve(t1: float, num: int, rtol: float, delta: float = 1e-3, solver=None):
    kw = solver_args(t1, num, rtol)

    def one(beta, x0, B, V):
        trajectory = tf.solve(
            make_field(beta, B, V),
            x0,
            kw["ts"],
            solver=solver,
            rtol=kw["rtol"],
            atol=kw["atol"],
            max_steps=kw["max_steps"],
            throw=False,
            observe=lambda x: clustered(x, delta),
        )
        s = trajectory.stats
        return trajectory.observed, s["num_accepted_steps"], s["num_rejected_steps"]

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


class FoldedValueLogits(tf.AbstractSphereField):
    """SA for V = (KᵀQ)ᵀ/c (the `qk` ensembles): logits β<(KᵀQ)x_i, x_j> = βc<x_i, V x_j>,
    so y = x Vᵀ serves as keys and values, one d×d product per evaluation instead of two."""

    beta: jax.Array
    scale: float
    V: jax.Array

    def drift(self, t, x, args=None):
        y = x @ self.V.T
        weights = jax.nn.softmax((self.beta * self.scale) * (x @ y.T), axis=-1)
        return weights @ y

    def jump_times(self):
        return None

    def check_state(self, x):
        pass


QK_SCALE = {"ginibre:qk": D**0.5, "goe:qk": (D + 1.0) ** 0.5}


@functools.lru_cache
def make_solve_variant(
    t1: float, num: int, rtol: float, *, grouped=False, scale=None, delta: float = 1e-3
):
    """The cell solve, optionally (grouped) vmapped over β inside a vmap over starts, so the
    β systems of one start share (B, V) and each d×d product is one (nβ·n, d) @ (d, d); and/or
    (scale given) with the folded field of the `qk` ensembles."""
    ts = jnp.linspace(0.0, t1, num, dtype=jnp.float32)

    def one(beta, x0, B, V):
        field = make_field(beta, B, V) if scale is None else FoldedValueLogits(beta, scale, V)
        trajectory = tf.solve(
            field,
            x0,
            ts,
            rtol=rtol,
            atol=rtol,
            max_steps=65536,
            throw=False,
            observe=lambda x: clustered(x, delta),
        )
        s = trajectory.stats
        return trajectory.observed, s["num_accepted_steps"], s["num_rejected_steps"]

    if grouped:
        return jax.jit(
            jax.vmap(jax.vmap(one, in_axes=(0, None, None, None)), in_axes=(None, 0, 0, 0))
        )
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


def cell_inputs(ensemble: str, starts: int):
    xs, Bs, Vs = zip(*(system(ensemble, s) for s in range(starts)), strict=True)
    return jnp.stack(xs), jnp.stack(Bs), jnp.stack(Vs)


def rates(batch: int, repeats: int) -> tuple[list, float]:
    key = jax.random.key(1)
    a = jax.random.normal(key, (2048, 2048), jnp.float32)
    big = time_stats(jax.jit(lambda a: a @ a), a, repeats=repeats)
    peak = 2 * 2048**3 / big["min"] / 1e9
    rows = [["2048 × 2048 @ 2048 × 2048", 1, f"{peak:.1f}", f"{big['min'] * 1e3:.2f}"]]
    x = jax.random.normal(key, (batch, N, D), jnp.float32)
    V = jax.random.normal(jax.random.key(2), (batch, D, D), jnp.float32)
    flops = 2 * batch * N * D * D
    cases = {
        "B distinct (32,128)@(128,128) [vmap, own V]": (jax.vmap(lambda x, v: x @ v.T), (x, V)),
        "(B·32,128)@(128,128) [vmap, shared V]": (jax.vmap(lambda x: x @ V[0].T), (x,)),
        "B distinct (32,128)@(128,256) [B and V in one]": (
            jax.vmap(lambda x, v: x @ jnp.concatenate([v, v], 0).T),
            (x, V),
        ),
    }
    for name, (fn, args) in cases.items():
        stats = time_stats(jax.jit(fn), *args, repeats=repeats)
        f = flops * (2 if "256" in name else 1)
        rows.append([name, batch, f"{f / stats['min'] / 1e9:.1f}", f"{stats['min'] * 1e3:.3f}"])
    hlo = jax.jit(jax.vmap(lambda x, v: x @ v.T)).lower(x, V).as_text()
    dots = [line.strip() for line in hlo.splitlines() if "dot_general" in line]
    return rows, peak, dots[0] if dots else "no dot_general"


def compare_with_reference(cells: list[str], starts: int) -> None:
    """Before and after (1e-4, float32) against Tsit5 1e-7 in float64 on the same starts (the
    draws are made in float32 and cast, as the sweep does): |ΔP̄| over save times."""
    ts = jnp.linspace(0.0, 30.0, 151)

    def make(rtol, dtype):
        def one(beta, x0, B, V):
            trajectory = tf.solve(
                make_field(beta, B, V),
                x0,
                ts.astype(dtype),
                rtol=rtol,
                atol=rtol,
                max_steps=65536,
                throw=False,
                observe=lambda x: clustered(x, 1e-3),
            )
            return trajectory.observed

        return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))

    def inputs(ensemble, dtype):
        xs, Bs, Vs = zip(*(system(ensemble, s, dtype) for s in range(starts)), strict=True)
        return jnp.stack(xs), jnp.stack(Bs), jnp.stack(Vs)

    rows = []
    for cell in cells:
        ensemble, b = cell.split("@")
        ref = np.asarray(make(1e-7, jnp.float64)(jnp.float64(b), *inputs(ensemble, jnp.float64)))
        args32 = (jnp.float32(b), *inputs(ensemble, jnp.float32))
        with own_extension():
            before = np.asarray(make(1e-4, jnp.float32)(*args32))
        after = np.asarray(make(1e-4, jnp.float32)(*args32))
        row = [ensemble, b]
        for out in (before, after):
            mean = np.abs(out.mean(0) - ref.mean(0))
            row += [f"{mean.max():.1e}", f"{mean.mean():.1e}", f"{np.abs(out - ref).max():.2g}"]
        rows.append(row)
        print(rows[-1], flush=True)
    body = (
        f"Tsit5 1e-4 float32 before (the field's own extension off the sphere) and after "
        f"(`solve`'s radial extension) against Tsit5 1e-7 float64, {starts} starts, 151 save "
        f"times on [0, 30]; P̄ = mean over starts of the clustered fraction:\n\n"
        + table(
            [
                "ensemble",
                "β",
                "before max |ΔP̄|",
                "mean",
                "one start max",
                "after max |ΔP̄|",
                "mean",
                "one start max",
            ],
            rows,
        )
    )
    report("bench_fig5", "Fig. 5: before/after against a float64 reference", body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensembles", nargs="+", default=list(ENSEMBLES))
    parser.add_argument("--betas", nargs="+", type=float, default=[0.1, 1.0, 4.0, 9.0])
    parser.add_argument(
        "--starts", type=int, default=None, help="systems per (ensemble, β) cell (default 16)"
    )
    parser.add_argument("--t1", type=float, default=30.0)
    parser.add_argument("--num", type=int, default=151, help="save times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerances", nargs="*", type=float, default=[1e-3, 1e-5])
    parser.add_argument("--bosh3", nargs="*", type=float, default=[1e-4], help="Bosh3 rtols")
    parser.add_argument(
        "--quick", action="store_true", help="2 β, 8 starts (unless given), t1 = 10"
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        metavar="ENSEMBLE@BETA",
        help="only compare before/after with Tsit5 1e-7 float64 on these cells, e.g. "
        "goe:wishart@9 ginibre:qk@1 (float64: run as its own process)",
    )
    args = parser.parse_args()
    if args.reference:
        compare_with_reference(args.reference, args.starts or 16)
        return
    if args.quick:
        args.betas, args.t1, args.num = [1.0, 9.0], 10.0, 51
        args.starts = args.starts or 8
        args.tolerances, args.bosh3 = [1e-3], []
    args.starts = args.starts or 16
    load = [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    B = args.starts
    flops = field_flops(N, D)

    # 1. rates
    rate_rows, peak, dot = rates(B, args.repeats)

    # 2. field evaluation, standalone and vmapped over the chunk's systems
    x, Bm, V = cell_inputs("goe:wishart", B)
    beta = jnp.asarray(4.0, jnp.float32)
    t0 = jnp.asarray(0.0, jnp.float32)
    single = jax.jit(lambda x, b, v: make_field(beta, b, v)(t0, x))
    batched = jax.jit(jax.vmap(lambda x, b, v: make_field(beta, b, v)(t0, x)))
    s1 = time_stats(single, x[0], Bm[0], V[0], repeats=max(args.repeats, 20))
    sB = time_stats(batched, x, Bm, V, repeats=args.repeats * 3)
    eval_rate_single = flops / s1["min"] / 1e9
    eval_rate_batched = B * flops / sB["min"] / 1e9
    per_eval_batched = sB["min"] / B
    field_rows = [
        ["standalone, 1 system", f"{s1['min'] * 1e6:.1f}", f"{eval_rate_single:.1f}"],
        [
            f"vmapped over {B} systems (per system)",
            f"{per_eval_batched * 1e6:.1f}",
            f"{eval_rate_batched:.1f}",
        ],
    ]

    # 3. the solve per (ensemble, β) cell, before (the field's own extension off the sphere,
    # P_x a(x)) and after (`solve`'s radial extension, f(x/|x|)): same starts, same process.
    def run_cells(label):
        solve = make_solve(args.t1, args.num, 1e-4)
        rows, cells = [], {}
        for ensemble in args.ensembles:
            x, Bm, V = cell_inputs(ensemble, B)
            for b in args.betas:
                beta = jnp.asarray(b, jnp.float32)
                stats = time_stats(solve, beta, x, Bm, V, repeats=args.repeats)
                observed, accepted, rejected = block(solve(beta, x, Bm, V))
                steps = np.asarray(accepted + rejected)
                lockstep = int(steps.max())
                gflops = 6 * lockstep * B * flops / stats["min"] / 1e9
                field_share = 6 * lockstep * per_eval_batched * B / stats["min"]
                cells[(ensemble, b)] = dict(
                    time=stats["min"],
                    steps=steps,
                    accepted=np.asarray(accepted),
                    rejected=np.asarray(rejected),
                    observed=np.asarray(observed),
                )
                rows.append(
                    [
                        label,
                        ensemble,
                        b,
                        f"{np.mean(accepted):.0f}",
                        f"{np.mean(rejected):.0f}",
                        lockstep,
                        f"{np.mean(steps) / lockstep:.2f}",
                        f"{stats['min']:.2f}",
                        f"{stats['median']:.2f}",
                        f"{stats['first']:.1f}",
                        f"{stats['min'] / (lockstep * B) * 1e6:.0f}",
                        f"{gflops:.1f}",
                        f"{field_share:.2f}",
                    ]
                )
                print(rows[-1], flush=True)
        return rows, cells

    with own_extension():
        before_rows, before = run_cells("before")
    after_rows, cells = run_cells("after")
    solve_rows = before_rows + after_rows
    extension_rows = []
    for key in cells:
        diff = np.abs(cells[key]["observed"].mean(0) - before[key]["observed"].mean(0))
        extension_rows.append(
            [
                key[0],
                key[1],
                f"{before[key]['steps'].mean():.0f} → {cells[key]['steps'].mean():.0f}",
                f"{before[key]['time'] / cells[key]['time']:.2f}",
                f"{np.nanmax(diff):.1e}",
                f"{np.nanmax(np.abs(cells[key]['observed'] - before[key]['observed'])):.1e}",
            ]
        )

    # 3b. improvements on the same starts: β grouped under shared weights (one big product per
    # d×d product), and the folded field of the qk ensembles. Same systems as the cells above.
    variant_rows, variant_factor = [], {}
    betas = jnp.asarray(args.betas, jnp.float32)
    for ensemble in args.ensembles:
        x, Bm, V = cell_inputs(ensemble, B)
        base_time = sum(cells[(ensemble, b)]["time"] for b in args.betas)
        base_obs = np.stack([cells[(ensemble, b)]["observed"] for b in args.betas], 1)
        variants = {"grouped β": dict(grouped=True)}
        if ensemble in QK_SCALE:
            scale = QK_SCALE[ensemble]
            folded_error = float(jnp.max(jnp.abs(scale * V - jnp.swapaxes(Bm, -1, -2))))
            print(f"{ensemble}: max |c·V - (KᵀQ)ᵀ| = {folded_error:.1e}")
            variants["grouped β + folded"] = dict(grouped=True, scale=scale)
        for name, options in variants.items():
            fn = make_solve_variant(args.t1, args.num, 1e-4, **options)
            stats = time_stats(fn, betas, x, Bm, V, repeats=args.repeats)
            observed, accepted, rejected = (np.asarray(v) for v in block(fn(betas, x, Bm, V)))
            steps = accepted + rejected
            diff = np.abs(observed - base_obs)
            step_change = int(
                np.max(
                    np.abs(steps - np.stack([cells[(ensemble, b)]["steps"] for b in args.betas], 1))
                )
            )
            variant_factor[(ensemble, name)] = base_time / stats["min"]
            variant_rows.append(
                [
                    ensemble,
                    name,
                    f"{base_time:.2f}",
                    f"{stats['min']:.2f}",
                    f"{stats['median']:.2f}",
                    f"{stats['first']:.1f}",
                    f"{base_time / stats['min']:.2f}",
                    int(steps.max()),
                    f"{np.nanmax(diff):.1e}",
                    step_change,
                ]
            )
            print(variant_rows[-1], flush=True)

    # 4. tolerance and stiffness on the stiffest cell
    stiff = max(cells, key=lambda c: cells[c]["steps"].mean())
    ensemble, b = stiff
    x, Bm, V = cell_inputs(ensemble, B)
    beta = jnp.asarray(b, jnp.float32)
    tol_rows = []
    reference = cells[stiff]["observed"]
    settings = [("tsit5", 1e-4)] + [("tsit5", r) for r in args.tolerances]
    settings += [("bosh3", r) for r in args.bosh3]
    for name, rtol in settings:
        if (name, rtol) == ("tsit5", 1e-4):
            c = cells[stiff]
            seconds = c["time"]
            observed, accepted, rejected = c["observed"], c["accepted"], c["rejected"]
        else:
            solver = diffrax.Bosh3() if name == "bosh3" else None
            fn = make_solve(args.t1, args.num, rtol, solver=solver)
            seconds = time_stats(fn, beta, x, Bm, V, repeats=1)["min"]
            observed, accepted, rejected = (np.asarray(v) for v in block(fn(beta, x, Bm, V)))
        diff = np.abs(observed.mean(0) - reference.mean(0))
        failed = int(np.sum(~np.isfinite(observed).all(axis=1)))
        tol_rows.append(
            [
                f"{name} {rtol:g}",
                f"{np.mean(accepted):.0f}",
                f"{np.mean(rejected):.0f}",
                f"{seconds:.2f}",
                f"{np.nanmax(diff):.3f}",
                f"{np.nanmean(diff):.1e}",
                failed,
            ]
        )

    # spectral radius of the ODE's Jacobian at x(t1/6) (clustered or nearly, start 0), power
    # iteration on jvp, for the field's own extension P_x a(x) and the radial one a∘(x/|x|);
    # mean h = t1 / accepted steps of start 0 before / after.
    def radius(y, Bk, Vk, b, radial, iters=80):
        field = make_field(jnp.asarray(b, jnp.float32), Bk, Vk)
        f = (lambda z: field(t0, normalize(z))) if radial else (lambda z: field(t0, z))
        v = jax.random.normal(jax.random.key(3), y.shape, jnp.float32)

        def body(_, carry):
            v, _ = carry
            w = jax.jvp(f, (y,), (v,))[1]
            r = jnp.linalg.norm(w)
            return w / r, r

        _, r = jax.lax.fori_loop(0, iters, body, (v / jnp.linalg.norm(v), jnp.float32(1.0)))
        return r

    radius_j = jax.jit(radius, static_argnums=(4, 5))
    stiff_rows = []
    for ensemble in args.ensembles:
        x0, Bk, Vk = system(ensemble, 0)
        for b in args.betas:
            field = make_field(jnp.asarray(b, jnp.float32), Bk, Vk)
            ts = jnp.asarray([0.0, args.t1 / 6], jnp.float32)
            y = tf.solve(field, x0, ts, rtol=1e-4, atol=1e-4, max_steps=65536).xs[-1]
            rho_own = float(radius_j(y, Bk, Vk, b, False, 80))
            rho_radial = float(radius_j(y, Bk, Vk, b, True, 80))
            h_before = args.t1 / before[(ensemble, b)]["accepted"][0]
            h_after = args.t1 / cells[(ensemble, b)]["accepted"][0]
            stiff_rows.append(
                [
                    ensemble,
                    b,
                    f"{rho_own:.1f}",
                    f"{rho_radial:.1f}",
                    f"{h_before:.4f}",
                    f"{h_after:.4f}",
                    f"{h_before * rho_own:.2f}",
                    f"{h_after * rho_radial:.2f}",
                ]
            )
    top = float(jnp.linalg.eigvalsh(system("goe:wishart", 0)[2]).max())

    # full-size estimate: per ensemble, system-steps interpolated over 90 β, at the measured
    # time per system-step of the cells (lockstep max within a chunk of 1024 starts is taken
    # as the cell's max/mean ratio).
    betas_full = np.linspace(0.1, 9.0, 90)

    def full_size_hours(cells):
        seconds = 0.0
        for ensemble in args.ensembles:
            bs = np.array(args.betas)
            cell_time = np.array([cells[(ensemble, b)]["time"] for b in bs]) / B
            seconds += float(np.sum(np.interp(betas_full, bs, cell_time))) * 1024 * 30 / args.t1
        return seconds / 3600

    hours_before, hours = full_size_hours(before), full_size_hours(cells)
    best = {
        e: max([f for (e2, _), f in variant_factor.items() if e2 == e] + [1.0])
        for e in args.ensembles
    }
    total_after = 0.0
    for ensemble in args.ensembles:
        bs = np.array(args.betas)
        cell_time = np.array([cells[(ensemble, b)]["time"] for b in bs]) / B
        total_after += (
            float(np.sum(np.interp(betas_full, bs, cell_time)))
            * 1024
            * (30.0 / args.t1)
            / best[ensemble]
        )
    hours_after = total_after / 3600

    factors = ", ".join(f"{e} ×{f:.2f}" for e, f in best.items())
    body = "\n".join(
        [
            f"SA n = {N}, d = {D}, float32, Tsit5 (renormalised), rtol = atol = 1e-4, t ∈ [0, "
            f"{args.t1}], {args.num} save times, clustered fraction (δ = 1e-3) observed; "
            f"{B} starts per (ensemble, β) cell (start s drawn as the sweep draws it, seed 0). "
            f"Load average at start {load}. FLOPs per field evaluation {flops / 1e6:.3f} M "
            f"(2nd² + 2n²d multiply-adds).",
            "",
            f"**Rates** (min of {args.repeats}; float32; B = {B}):",
            "",
            table(["product", "B", "GFLOP/s", "ms"], rate_rows),
            "",
            f"HLO of vmap(x @ vᵀ) with own v: `{dot[:200]}`",
            "",
            "**One field evaluation** (P_x(attention), dense, goe:wishart β = 4):",
            "",
            table(["", "µs per system", "GFLOP/s"], field_rows),
            "",
            "**Solve per cell**, before = the ODE term is the field's own extension P_x a(x) off "
            "the sphere (as until this change), after = `solve`'s radial extension a∘(x/|x|) "
            "(steps per system; lockstep = max over the cell, which the vmapped "
            "loop runs for all; µs/sys-step = time / (lockstep · B); field share = 6 · lockstep · "
            "vmapped evaluation time / solve time):",
            "",
            table(
                [
                    "",
                    "ensemble",
                    "β",
                    "accepted",
                    "rejected",
                    "lockstep",
                    "mean/max",
                    "min s",
                    "median s",
                    "first s",
                    "µs/sys-step",
                    "GFLOP/s",
                    "field share",
                ],
                solve_rows,
            ),
            "",
            f"**Improvements** on the same {B} starts × {len(args.betas)} β per ensemble: "
            "baseline = sum of the cells' min times above (one vmap over starts per β); grouped β "
            "= one program, vmap over starts of a vmap over β with shared (KᵀQ, V); folded = the "
            "`qk` ensembles' one-product field. max |ΔP| over starts, β, save times against the "
            "baseline; Δsteps = max change of any system's step count:",
            "",
            table(
                [
                    "ensemble",
                    "variant",
                    "baseline s",
                    "min s",
                    "median s",
                    "first s",
                    "speed-up",
                    "lockstep",
                    "max |ΔP|",
                    "Δsteps",
                ],
                variant_rows,
            ),
            "",
            f"**Tolerance** on the stiffest cell ({stiff[0]}, β = {stiff[1]}); ΔP against 1e-4 "
            "on the same starts (mean over starts, max and mean over save times):",
            "",
            table(
                [
                    "solver, rtol = atol",
                    "accepted",
                    "rejected",
                    "s",
                    "max |ΔP|",
                    "mean |ΔP|",
                    "failed",
                ],
                tol_rows,
            ),
            "",
            "**Before → after, per cell**: mean steps, speed-up (min time before / after), "
            "max |ΔP| of the mean over starts and of single starts (over save times):",
            "",
            table(
                ["ensemble", "β", "steps", "speed-up", "max |ΔP̄|", "max |ΔP| one start"],
                extension_rows,
            ),
            "",
            f"**Stiffness** (start 0): ρ = spectral radius of the ODE's Jacobian at x(t1/6) "
            f"(power iteration, 80 iterations) with the field's own extension and with the radial "
            f"one; h = t1 / accepted steps before / after; Tsit5's real stability interval is "
            f"about [-3.5, 0]. λ_max(V) of goe:wishart start 0 = {top:.2f}:",
            "",
            table(
                [
                    "ensemble",
                    "β",
                    "ρ own",
                    "ρ radial",
                    "h before",
                    "h after",
                    "h·ρ before",
                    "h·ρ after",
                ],
                stiff_rows,
            ),
            "",
            f"Matmul rate {peak:.1f} GFLOP/s; field standalone {eval_rate_single:.1f}, vmapped "
            f"{eval_rate_batched:.1f} GFLOP/s. **Full-size estimate** (4 × 90 β × 1024 starts, "
            f"cell times per system interpolated over β): before **{hours_before:.1f} h**, "
            f"after **{hours:.1f} h** on this machine at this load; with the best variant per "
            f"ensemble ({factors}): **{hours_after:.1f} h**.",
        ]
    )
    report("bench_fig5", "Fig. 5 workload: roofline, steps, batching", body)
    print(machine())


if __name__ == "__main__":
    main()

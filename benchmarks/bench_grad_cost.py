"""Gradient through the flow against the forward solve, on the fitting problem of issue 12.

SA with Gaussian Q, K, V (d = 3), n = 16 tokens, a batch of 16 starts of the two-cluster task
(fit_two_clusters.yaml), horizon 5, Tsit5 rtol = atol = 1e-3, float32. The loss is the task loss
of x(5) averaged over the batch (`batch_loss` with the batch drawn once). For each adjoint and
saving setting: the forward loss and `value_and_grad` are compiled apart (trace + lower, and XLA,
wall and CPU seconds), then timed interleaved, forward, gradient and the default forward
(plain model, default adjoint) in turn, `--repeats` times each (block_until_ready; min and
median); the ratio of the minima and the median of the per-pair ratios (the pair ran back to
back, so a load burst hits both), and the gradient's minimum CPU time over the default
forward's. Beside each time, the
relative error of the float32 gradient against two float64 references computed in a
subprocess with x64: the same discrete solve (Tsit5 1e-3: what an exact adjoint must match up
to float32 rounding) and the flow itself (Tsit5 1e-10); and, exactness itself, each setting's
float64 gradient against the default adjoint's float64 gradient of the same solve (relative
difference; ~1e-11 for an exact adjoint, the discretisation error for BacksolveAdjoint). Then
the compile time of one fit step (`make_step`) with the defaults.

Variants beyond diffrax's adjoints: `tf.StoredAdjoint()` (every step's residuals stored, no
recomputation; `max_steps` sized just above the 9-10 steps the solve takes) and
`tf.AnalyticVJPAttention()` (the model's attention with the analytic softmax backward).
One-core method of issue 22: `taskset -c 0` with
XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'.

    PYTHONPATH=. python benchmarks/bench_grad_cost.py [--repeats 21]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import transformer_flows as tf
from transformer_flows._fit import FIT_COMPILER_OPTIONS

N, D, BATCH, HORIZON, TOL = 16, 3, 16, 5.0, 1e-3


def problem(dtype):
    """(model, task, x0, labels): the same numbers in either dtype (drawn in float32)."""
    keys = jax.random.split(jax.random.key(0), 3)
    weights = [jax.random.normal(k, (D, D), jnp.float32) / np.sqrt(D) for k in keys]
    model = tf.SelfAttention(jnp.asarray(1.0, dtype), *(w.astype(dtype) for w in weights))
    anchors = jnp.asarray([[0, 0, 1.0], [0, 0, -1.0]], jnp.float32)
    task32 = tf.LabeledTargets(
        tf.LabeledInputs(anchors, n=N), jnp.asarray([[1.0, 0, 0], [-1.0, 0, 0]], jnp.float32)
    )
    x0, labels = jax.vmap(task32.sample)(jax.random.split(jax.random.key(1), BATCH))
    task = tf.LabeledTargets(
        tf.LabeledInputs(anchors.astype(dtype), n=N), task32.targets.astype(dtype)
    )
    # Cast and renormalised: float32 unit vectors are not unit vectors to float64 precision.
    return model, task, tf.normalize(x0.astype(dtype)), labels


def settings():
    """name -> (FlowOptions keyword arguments, number of save times, attention method or None
    for the model's default)."""
    rca = diffrax.RecursiveCheckpointAdjoint
    analytic = tf.AnalyticVJPAttention()
    return {
        "RecursiveCheckpointAdjoint() [default], max_steps 4096": ({}, 2, None),
        "RecursiveCheckpointAdjoint(checkpoints=16)": ({"adjoint": rca(checkpoints=16)}, 2, None),
        "RecursiveCheckpointAdjoint(checkpoints=32)": ({"adjoint": rca(checkpoints=32)}, 2, None),
        "RecursiveCheckpointAdjoint(), max_steps 64": ({"max_steps": 64}, 2, None),
        "RecursiveCheckpointAdjoint(checkpoints=12), max_steps 64": (
            {"adjoint": rca(checkpoints=12), "max_steps": 64},
            2,
            None,
        ),
        "DirectAdjoint(), max_steps 16": (
            {"adjoint": diffrax.DirectAdjoint(), "max_steps": 16},
            2,
            None,
        ),
        "DirectAdjoint(), max_steps 64": (
            {"adjoint": diffrax.DirectAdjoint(), "max_steps": 64},
            2,
            None,
        ),
        "BacksolveAdjoint()": ({"adjoint": diffrax.BacksolveAdjoint()}, 2, None),
        "RecursiveCheckpointAdjoint() [default], 11 save times": ({}, 11, None),
        "StoredAdjoint(), max_steps 12": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 12},
            2,
            None,
        ),
        "StoredAdjoint(), max_steps 16": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 16},
            2,
            None,
        ),
        "StoredAdjoint(), max_steps 32": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 32},
            2,
            None,
        ),
        "AnalyticVJPAttention + RecursiveCheckpointAdjoint() [default adjoint]": ({}, 2, analytic),
        "AnalyticVJPAttention + StoredAdjoint(), max_steps 12": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 12},
            2,
            analytic,
        ),
        "AnalyticVJPAttention + StoredAdjoint(), max_steps 16": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 16},
            2,
            analytic,
        ),
        "AnalyticVJPAttention + StoredAdjoint(), max_steps 32": (
            {"adjoint": tf.StoredAdjoint(), "max_steps": 32},
            2,
            analytic,
        ),
    }


def loss_fn(task, kwargs, num_saves):
    flow = tf.FlowOptions(horizon=HORIZON, rtol=TOL, atol=TOL, **kwargs)

    def loss(model, x0, labels):
        field = tf.as_field(model)
        final = jax.vmap(lambda x: flow.trajectory(field, x, num_saves).xs[-1])(x0)
        return jnp.mean(jax.vmap(task.loss)(final, labels))

    return loss


def flat_grad(grads) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


def reference(path: str, only, x64_check: bool) -> None:
    """In a float64 process: the default adjoint's gradient at tolerance TOL ("discrete") and
    at 1e-10 ("flow"), and each selected setting's float64 gradient at TOL (named by its
    setting; an exact adjoint equals "discrete" to float64 rounding)."""
    jax.config.update("jax_enable_x64", True)
    model, task, x0, labels = problem(jnp.float64)
    out = {}
    global TOL
    for name, tol in (("discrete", TOL), ("flow", 1e-10)):
        TOL = tol
        grad = eqx.filter_jit(eqx.filter_grad(loss_fn(task, {"max_steps": 100_000}, 2)))
        out[name] = flat_grad(grad(model, x0, labels))
    TOL = 1e-3
    for name, (kwargs, num_saves, attention) in settings().items():
        selected = not only or any(s in name for s in only)
        if not x64_check or not selected or num_saves != 2:
            continue
        m = model if attention is None else eqx.tree_at(lambda m: m.attention, model, attention)
        grad = eqx.filter_jit(eqx.filter_grad(loss_fn(task, kwargs, num_saves)))
        out["setting: " + name] = flat_grad(grad(m, x0, labels))
    np.savez(path, **out)


def compile_seconds(fn, *args):
    """(trace+lower wall s, XLA compile wall s, XLA compile CPU s, compiled)."""
    began = time.perf_counter()
    lowered = fn.lower(*args)
    traced = time.perf_counter()
    cpu = time.process_time()
    compiled = lowered.compile()
    return traced - began, time.perf_counter() - traced, time.process_time() - cpu, compiled


def temp_mb(compiled) -> float:
    """XLA's temporary buffer size of a compiled program (MB; nan where not reported)."""
    compiled = getattr(compiled, "compiled", compiled)  # equinox's wrapper holds JAX's
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 1e6
    except (AttributeError, NotImplementedError):
        return float("nan")


def interleaved(forward, gradient, args, repeats, baseline, baseline_args):
    """Wall times of forward and gradient called alternately, the median of the per-pair
    ratios, and the ratio of the minimum CPU times (process time, all threads: steadier than
    wall time on a loaded machine). `baseline` (the default forward: plain model, default
    adjoint's while loop) runs in the same rounds; its minimum CPU time is returned last."""
    t_f, t_g, c_f, c_g, c_b = [], [], [], [], []
    for _ in range(repeats):
        for fn, a, times, cpu in (
            (forward, args, t_f, c_f),
            (gradient, args, t_g, c_g),
            (baseline, baseline_args, [], c_b),
        ):
            began, began_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*a))
            times.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
    pair = statistics.median(g / f for f, g in zip(t_f, t_g, strict=True))
    return t_f, t_g, pair, min(c_g) / min(c_f), min(c_f), min(c_g), min(c_b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--only", nargs="*", help="names of settings (substring match)")
    parser.add_argument("--dots-only", action="store_true", help="skip the XLA-default row")
    parser.add_argument("--no-fit-step", action="store_true", help="skip the fit-step compile")
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--no-x64-check", action="store_true", help="skip the float64 gradients")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.reference:
        reference(args.reference, args.only, not args.no_x64_check)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "reference.npz")
        command = [sys.executable, __file__, "--reference", path]
        command += ["--no-x64-check"] * args.no_x64_check + (
            ["--only", *args.only] if args.only else []
        )
        subprocess.run(command, check=True)
        refs = dict(np.load(path))
    x64 = {k.removeprefix("setting: "): v for k, v in refs.items() if k.startswith("setting: ")}
    refs = {k: v for k, v in refs.items() if not k.startswith("setting: ")}
    plain_model, task, x0, labels = problem(jnp.float32)
    rows = []
    for options_name, options in (("dots only", FIT_COMPILER_OPTIONS), ("XLA default", None)):
        for name, (kwargs, num_saves, attention) in settings().items():
            if args.only and not any(s in name for s in args.only):
                continue
            if options is None and ("[default], max_steps" not in name or args.dots_only):
                continue
            loss = loss_fn(task, kwargs, num_saves)
            if attention is not None:
                model = eqx.tree_at(lambda m: m.attention, plain_model, attention)
            else:
                model = plain_model
            forward = eqx.filter_jit(loss, compiler_options=options)
            gradient = eqx.filter_jit(eqx.filter_value_and_grad(loss), compiler_options=options)
            fl, fc, fcpu, forward = compile_seconds(forward, model, x0, labels)
            gl, gc, gcpu, gradient = compile_seconds(gradient, model, x0, labels)
            baseline = eqx.filter_jit(loss_fn(task, {}, num_saves), compiler_options=options)
            baseline = baseline.lower(plain_model, x0, labels).compile()
            t_f, t_g, pair, cpu_ratio, cpu_f, cpu_g, cpu_b = interleaved(
                forward,
                gradient,
                (model, x0, labels),
                args.repeats,
                baseline,
                (plain_model, x0, labels),
            )
            g = flat_grad(gradient(model, x0, labels)[1])
            errors = {k: float(np.linalg.norm(g - v) / np.linalg.norm(v)) for k, v in refs.items()}
            if name in x64:  # the same solve in float64 against the default adjoint's gradient
                d = refs["discrete"]
                errors["x64"] = float(np.linalg.norm(x64[name] - d) / np.linalg.norm(d))
            rows.append(
                {
                    "setting": name,
                    "xla": options_name,
                    "forward_ms_min": 1e3 * min(t_f),
                    "forward_ms_median": 1e3 * statistics.median(t_f),
                    "grad_ms_min": 1e3 * min(t_g),
                    "grad_ms_median": 1e3 * statistics.median(t_g),
                    "ratio_of_minima": min(t_g) / min(t_f),
                    "median_pair_ratio": pair,
                    "cpu_time_ratio_of_minima": cpu_ratio,
                    "forward_cpu_ms_min": 1e3 * cpu_f,
                    "grad_cpu_ms_min": 1e3 * cpu_g,
                    # The gradient against the forward a user runs without it (plain model,
                    # default adjoint): the setting's own forward may be a scan of max_steps.
                    "default_forward_cpu_ms_min": 1e3 * cpu_b,
                    "cpu_time_ratio_vs_default_forward": cpu_g / cpu_b,
                    "forward_temp_mb": temp_mb(forward),
                    "grad_temp_mb": temp_mb(gradient),
                    "forward_compile_s": [round(fl, 2), round(fc, 2), round(fcpu, 2)],
                    "grad_compile_s": [round(gl, 2), round(gc, 2), round(gcpu, 2)],
                    "grad_error_vs_float64_same_tol": errors["discrete"],
                    "grad_error_vs_float64_flow": errors["flow"],
                    "float64_grad_rel_diff_vs_default_adjoint": errors.get("x64"),
                    "loadavg": open("/proc/loadavg").read().split()[:3],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if not args.no_fit_step:
        rows.append(fit_step_compile(plain_model, task))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def fit_step_compile(model, task):
    """Compile time of one `make_step` step with the default FlowOptions at tolerance TOL."""
    import optax

    flow = tf.FlowOptions(horizon=HORIZON, rtol=TOL, atol=TOL)
    optimizer = optax.adam(1e-2)
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = tf.make_step(task, optimizer, flow, spec, BATCH)
    lowered, compiled, cpu, step_compiled = compile_seconds(
        step, model, opt_state, jax.random.key(2)
    )
    times = []
    for _ in range(9):
        began = time.perf_counter()
        jax.block_until_ready(step_compiled(model, opt_state, jax.random.key(2)))
        times.append(time.perf_counter() - began)
    return {
        "setting": "fit step (make_step), defaults",
        "trace_lower_s": lowered,
        "xla_compile_s": compiled,
        "xla_compile_cpu_s": cpu,
        "step_ms_min": 1e3 * min(times),
        "step_ms_median": 1e3 * statistics.median(times),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


if __name__ == "__main__":
    main()

"""The one-pass CPU attention kernel (issue 22 item 3) on the Fig. 3(a) workload, on and off.

Fig. 3(a) workload: SA with Q = K = V = I, n = 32, d = 2, `--betas` β in [0.1, 9] × `--starts`
Gaussian starts (2048 systems by default), t ∈ [0, 30], the clustered fraction (δ = 10⁻³)
at 31 times, Tsit5 rtol = atol = 1e-4, float32. Two programs, each traced with the kernel on
and with it off: `tf.solve` vmapped over the systems, and `tf.solve_batch` (its default lanes).
Process CPU time of one call (compile excluded, `block_until_ready`), minimum over `--rounds`
interleaved rounds; the saved fractions and step counts of the two paths are compared, and,
as a control of what float32 rounding alone does on this chaotic workload, those of the
kernel-off program from starts moved by one ulp. Accuracy: the mean |saved fraction −
reference| of both paths, the reference being `solve_batch` in float64 at rtol = atol = 1e-9.
One field evaluation over the whole batch is timed the same way.

Run it on one pinned core, single-threaded XLA (the method of issue 22):

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python benchmarks/bench_attention_kernel.py
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)  # the float64 reference; the workload is float32

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import block, report, table  # noqa: E402

# The same Fig. 3(a) workload and observable as the lane benchmark.
from bench_lanes import T1, D, N, clustered_fraction, workload  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows import _attention_kernel  # noqa: E402


def programs(tol, dtype=jnp.float32):
    ts = jnp.linspace(0.0, T1, 31, dtype=dtype)

    def vmapped(betas, x0s):
        def one(beta, x0):
            out = tf.solve(
                tf.SelfAttention(beta), x0, ts, solver=diffrax.Tsit5(), rtol=tol, atol=tol,
                observe=clustered_fraction, max_steps=4096,
            )  # fmt: skip
            return out.observed, out.stats["num_steps"]

        return jax.vmap(one)(betas, x0s)

    def batch(betas, x0s):
        out = tf.solve_batch(
            eqx.filter_vmap(tf.SelfAttention)(betas), x0s, ts, batched_field=True, rtol=tol,
            atol=tol, observe=clustered_fraction, max_steps=4096,
        )  # fmt: skip
        return out.observed, out.num_steps

    def evaluation(betas, x0s):
        return jax.vmap(lambda b, x: tf.SelfAttention(b).drift(0.0, x))(betas, x0s)

    return {"tf.solve (vmapped)": vmapped, "tf.solve_batch": batch, "one evaluation": evaluation}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=int, default=16)
    parser.add_argument("--starts", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="program names to run")
    args = parser.parse_args()
    betas, x0s = workload(args.betas, args.starts)
    sides = {}
    outputs, compile_s = {}, {}
    for name, fn in programs(args.tol).items():
        if args.only and not any(o in name for o in args.only):
            continue
        for on in (False, True):
            # Read when traced (the switch clears JAX's caches); compiled ahead of time, so
            # the interleaved rounds below never trace again.
            _attention_kernel.use_attention_kernel(on)
            start = time.process_time()
            sides[(name, on)] = jax.jit(fn).lower(betas, x0s).compile()
            outputs[(name, on)] = block(sides[(name, on)](betas, x0s))
            compile_s[(name, on)] = time.process_time() - start
    # Accuracy: the saved fractions against solve_batch in float64 at rtol = atol = 1e-9
    # (kernel off), mean over systems and save times.
    _attention_kernel.use_attention_kernel(False)
    x0s_64 = tf.normalize(x0s.astype(jnp.float64))  # on the sphere to float64 rounding
    exact = block(
        jax.jit(programs(1e-9, jnp.float64)["tf.solve_batch"])(betas.astype(jnp.float64), x0s_64)
    )[0]
    _attention_kernel.use_attention_kernel(None)
    # Rounding control: the kernel-off program from starts moved by one ulp (the spread of
    # saves and step counts that float32 rounding alone gives on this chaotic workload).
    nudged = jnp.nextafter(x0s, jnp.asarray(2.0, x0s.dtype))
    control = {
        name: block(sides[(name, False)](betas, nudged))
        for name, _ in sides
        if name != "one evaluation"
    }
    cpu = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, fn in sides.items():
            start = time.process_time()
            block(fn(betas, x0s))
            cpu[side].append(time.process_time() - start)
    rows = []
    for name in dict.fromkeys(name for name, _ in sides):
        off, on = outputs[(name, False)], outputs[(name, True)]
        if name == "one evaluation":
            diff, steps_differ = float(np.max(np.abs(np.asarray(on) - np.asarray(off)))), "-"
            control_diff, control_steps, error_off, error_on = "-", "-", "-", "-"
        else:
            diff = float(np.max(np.abs(np.asarray(on[0]) - np.asarray(off[0]))))
            steps_differ = int(np.sum(np.asarray(on[1]) != np.asarray(off[1])))
            nudged_out = control[name]
            control_diff = float(np.max(np.abs(np.asarray(nudged_out[0]) - np.asarray(off[0]))))
            control_steps = int(np.sum(np.asarray(nudged_out[1]) != np.asarray(off[1])))
            error_off = float(np.mean(np.abs(np.asarray(off[0], np.float64) - exact)))
            error_on = float(np.mean(np.abs(np.asarray(on[0], np.float64) - exact)))
        t_off, t_on = min(cpu[(name, False)]), min(cpu[(name, True)])
        rows.append([
            name, t_off, t_on, t_off / t_on, float(np.median(cpu[(name, False)])),
            float(np.median(cpu[(name, True)])), diff, steps_differ, control_diff, control_steps,
            error_off, error_on,
        ])  # fmt: skip
    body = (
        f"{betas.shape[0]} systems ({args.betas} β × {args.starts} starts), n = {N}, d = {D}, "
        f"t ≤ {T1}, Tsit5 rtol = atol = {args.tol:g}, float32, 31 saves; process CPU time of "
        f"one call, min over {args.rounds} interleaved rounds; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"CPU affinity {sorted(os.sched_getaffinity(0))}.\n\n"
        + table(
            [
                "program",
                "kernel off CPU s (min)",
                "kernel on CPU s (min)",
                "speed-up",
                "off median",
                "on median",
                "max |Δ| (saves or drift)",
                "systems with other step count",
                "control: off, 1-ulp start, max |Δ|",
                "control: systems with other step count",
                "off: mean |saves − float64 ref|",
                "on: mean |saves − float64 ref|",
            ],
            rows,
        )
    )
    report("bench_attention_kernel", "one-pass CPU attention kernel", body)


if __name__ == "__main__":
    main()

"""How to integrate the hardmax field (9.5)–(9.6), which jumps where an argmax set changes:
error against a semi-analytic solution with one switch, for the adaptive Tsit5 (steps,
rejected steps) and the fixed-step hardmax layer `ResidualLayers` (the discrete transformer).

Configuration (d = 2, Q = K = V = I): z_2 = (0, 1) is a leader (C_2 = {2}, fixed);
z_1 = (0.3, 0.8) attends to z_2 and moves straight to it, z_1(t) = z_2 + e^{-t} a with
a = z_1(0) - z_2; z_3 = (0.2, 0.1) attends to z_1 (moving) until <z_3, a> = 0, i.e. until
g(t) = <z_2, a> + e^{-t}(<z_3(0) - z_2, a> + t|a|²) = 0, then to z_2:
  t < t*: z_3(t) = z_2 + e^{-t}(z_3(0) - z_2 + t a);
  t > t*: z_3(t) = z_2 + e^{-(t-t*)}(z_3(t*) - z_2).
(Each phase solves ż_3 = z_target - z_3 exactly; after t* the flow leaves the switching line,
d<z_3, a>/dt = <z_2 - z_3, a> < 0 there, so there is no sliding.)

Run: .venv/bin/python experiments/hardmax_integration.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import brentq  # noqa: E402

import transformer_flows as tf  # noqa: E402

Z0 = np.array([[0.3, 0.8], [0.0, 1.0], [0.2, 0.1]])
T1 = 4.0


def exact(t):
    z2, a = Z0[1], Z0[0] - Z0[1]
    w0 = Z0[2] - z2

    def before(s):
        return z2 + np.exp(-s) * (w0 + s * a)

    switch = brentq(lambda s: before(s) @ a, 0.0, T1)
    z1 = z2 + np.exp(-t) * a
    z3 = before(t) if t < switch else z2 + np.exp(-(t - switch)) * (before(switch) - z2)
    return np.stack([z1, z2, z3]), switch


def main():
    reference, switch = exact(T1)
    print(f"switch time t* = {switch:.6f}; z_3(T={T1}) = {reference[2]}")
    field = tf.HardmaxAttention()
    ts = jnp.array([0.0, T1])
    print("Tsit5 (adaptive PID):  tol, max error, steps, rejected")
    for tol in (1e-4, 1e-6, 1e-8, 1e-10, 1e-12):
        run = tf.solve(field, Z0, ts, rtol=tol, atol=tol, max_steps=100_000)
        error = np.abs(np.asarray(run.xs[-1]) - reference).max()
        stats = run.stats
        print(
            f"  {tol:.0e}  {error:.2e}  {int(stats['num_steps'])}  "
            f"{int(stats['num_rejected_steps'])}"
        )
    print("ResidualLayers (hardmax layer z + h ż):  dt, max error, steps")
    for dt in (0.1, 0.01, 0.001):
        run = tf.solve(field, Z0, ts, solver=tf.ResidualLayers(), dt0=dt, max_steps=100_000)
        error = np.abs(np.asarray(run.xs[-1]) - reference).max()
        print(f"  {dt:g}  {error:.2e}  {int(run.stats['num_steps'])}")


if __name__ == "__main__":
    main()

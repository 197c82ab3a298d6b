"""What `tf.limits.BranchNoise.increment`'s matrix square root costs (issue 19 follow-up).

The increment is P_X(β₀ D^{−1/2} B dW) with B Bᵀ = κ(X); the library takes B = κ^{1/2} by a
batched `eigh`. Any B with B Bᵀ = κ gives the same Gaussian increment, so a Cholesky factor
would do; this measures whether the root is worth replacing. The workload is the SDE test's
(tests/test_limits.py): two or four tokens in D = 4, H = N = 2, α_A = ½, `--paths` paths of
32 Euler steps, float32, vmapped. Four increments are timed (process CPU time of one call,
compile excluded, minimum over `--rounds`): `eigh` (the library's), `cholesky` (of
κ + 10 n ε tr(κ)/n·I + tiny: exact to rounding, PSD and singular κ included), `psd_cholesky`
(an unrolled column Cholesky that zeroes non-positive pivots) and `none` (κ itself in place
of its root: the wrong law, the floor that κ over the bank sets).

    python benchmarks/bench_branch_noise_root.py --tokens 2 --paths 8000 --bank 256

Measured (2 shared cores under load 5–9, CPU seconds; tokens 2, 8000 paths, bank 256):
eigh 8.44, cholesky 8.46, psd_cholesky 8.53, none 8.53; tokens 4, 2000 paths: eigh 2.88,
cholesky 2.83, none 2.75; tokens 2, 2000 paths, 2 rounds: 1.61, 1.56, 1.53, 1.52. The root is
within noise (n = 2) and at most 5% (n = 4) of a step: κ over the bank of M heads (M softmaxes
per path and step) is the cost, so `eigh` stays.
"""

import argparse
import functools
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import transformer_flows as tf  # noqa: E402
from transformer_flows._sphere import project_tangent  # noqa: E402


def _root_eigh(k):
    w, v = jnp.linalg.eigh(k)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))[None, :]) @ v.T


def _root_cholesky(k):
    n = k.shape[0]
    jitter = 10 * n * jnp.finfo(k.dtype).eps * jnp.trace(k) / n + jnp.finfo(k.dtype).tiny
    return jnp.linalg.cholesky(k + jitter * jnp.eye(n, dtype=k.dtype))


def _root_psd_cholesky(k):
    n = k.shape[0]
    tol = n * jnp.finfo(k.dtype).eps * jnp.trace(k)
    cols = []
    for j in range(n):
        r = k[:, j]
        for col in cols:
            r = r - col * col[j]
        ok = r[j] > tol
        col = jnp.where(ok, r / jnp.sqrt(jnp.where(ok, r[j], 1.0)), 0.0)
        cols.append(jnp.where(jnp.arange(n) >= j, col, 0.0))
    return jnp.stack(cols, axis=1)


ROOTS = {
    "eigh": _root_eigh,
    "cholesky": _root_cholesky,
    "psd_cholesky": _root_psd_cholesky,
    "none": lambda k: k,
}


@functools.partial(jax.jit, static_argnums=(3, 4))
def _final_cosines(noise, x0, keys, steps, root):
    root_h = jnp.asarray(steps**-0.5, x0.dtype)
    scale = jnp.asarray(noise.beta0 / x0.shape[-1] ** 0.5, x0.dtype)

    def one(key):
        def step(x, k):
            dw = root_h * jax.random.normal(k, x.shape, x.dtype)
            increment = project_tangent(x, scale * (ROOTS[root](noise.kappa(x)) @ dw))
            return tf.normalize(x + increment), None

        final = jax.lax.scan(step, x0, jax.random.split(key, steps))[0]
        return tf.limits.mean_offdiagonal_cosine(final)

    return jax.vmap(one)(keys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2)
    parser.add_argument("--paths", type=int, default=8000)
    parser.add_argument("--bank", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    f32 = jnp.float32
    x0 = tf.normalize(jnp.eye(args.tokens, 4, dtype=f32) + 0.3)
    noise = tf.limits.branch_noise(
        jax.random.key(15), bank=args.bank, heads=2, head_dim=2, alpha_A=0.5, dtype=f32
    )
    keys = jax.random.split(jax.random.key(16), args.paths)
    for root in ROOTS:
        cosines = _final_cosines(noise, x0, keys, 32, root).block_until_ready()
        best = float("inf")
        for _ in range(args.rounds):
            start = time.process_time()
            _final_cosines(noise, x0, keys, 32, root).block_until_ready()
            best = min(best, time.process_time() - start)
        print(
            f"{root:>13}: {best:.3f} s CPU per call; E c = {float(cosines.mean()):.4f}, "
            f"E c² = {float((cosines**2).mean()):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

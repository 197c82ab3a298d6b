"""Equiangular reductions of the normalisation placements and the Gaussian law of attention
without normalisation (docs/models.md "Normalisation placements"; derived here).

**Equiangular tokens** (Q = K = V = I): n tokens x_i = r θ_i with a common radius r and all
pairwise cosines <θ_i, θ_j> = ρ stay so under every placement (the Gram matrix is invariant under
all permutations). With Z = e^β + (n−1)e^{βρ}, a = e^β/Z (self weight), b = e^{βρ}/Z:

  c = <θ_i, A_i> = a + (n−1)bρ,    |A_i|² = a² + 2(n−1)abρ + (n−1)b²(1 + (n−2)ρ),
  F(ρ) = 2(<θ_k, A_i> − cρ) = 2(1−ρ)(1+(n−1)ρ)/(e^{β(1−ρ)} + n − 1)   (the SA rate (6.9)),

and θ̇_i = s^{-1} P^⊥ A_i gives ρ̇ = F(ρ)/s with

  Post-LN  s = 1,          r ≡ 1;
  Pre-LN   s = r,          ṙ = c;
  Peri-LN  s = r|A|,       ṙ = c/|A|;
  nGPT     s = |A|/α,      r ≡ 1.

Asymptotics (ρ → 1, where c, |A| → 1 and F ~ 2(1−ρ)): Post-LN 1 − ρ ~ C e^{−2t}; nGPT
1 − ρ ~ C e^{−2αt}; Pre-LN and Peri-LN r = t + O(1), and (1 − ρ) r² → L exactly by

  d log((1−ρ) r²)/dρ = 2(a − b)/F = (e^{β(1−ρ)} − 1)/((1−ρ)(1 + (n−1)ρ))

(the same for both: their (ρ, r) orbits coincide, Peri-LN runs along it at speed 1/|A|), so
L = (1−ρ0) r0² exp(∫_{ρ0}^1 (e^{β(1−ρ)} − 1)/((1−ρ)(1+(n−1)ρ)) dρ); at β = 0, (1−ρ)r² is
conserved. Hence 1 − ρ ~ L/t² (the 1/t² law).

**Gaussian law** (no normalisation, n → ∞): tokens i.i.d. N(m, Σ) give the velocity
v(x) = V(m + βΣKᵀQx) (the exponential tilt of N(m, Σ) by e^{β<Qx, Ky>} is N(m + βΣKᵀQx, Σ)),
an affine field, so the law stays Gaussian with ṁ = V(m + βΣKᵀQm), Σ̇ = AΣ + ΣAᵀ,
A = βVΣKᵀQ.

numpy/scipy, float64.
"""

import numpy as np
from scipy.integrate import quad, solve_ivp

from ._checks import as_output, check_count

PLACEMENTS = ("post_ln", "pre_ln", "peri_ln", "ngpt")


def _check_start(n, rho0, r0, beta):
    n = check_count(n, "n", 2)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"`beta` must be finite and >= 0, got {beta!r}.")
    if not (-1 / (n - 1) < rho0 < 1):
        raise ValueError(
            f"`rho0` must lie in (-1/(n-1), 1) = ({-1 / (n - 1):.4g}, 1) for n = {n} "
            f"equiangular unit vectors that are not all equal, got {rho0!r}."
        )
    if not (np.isfinite(r0) and r0 > 0):
        raise ValueError(f"`r0` must be a positive radius, got {r0!r}.")
    return n


def equiangular_terms(rho, n: int, beta: float) -> dict:
    """c = <θ_i, A_i>, |A_i|, F(ρ)/(1−ρ) and a − b for equiangular tokens (see module doc)."""
    rho = np.asarray(rho, float)
    # Weights divided by e^{βρ}: a = e^{β(1−ρ)}/Z', b = 1/Z', Z' = e^{β(1−ρ)} + n − 1.
    tilt = np.exp(beta * (1 - rho))
    z = tilt + n - 1
    a, b = tilt / z, 1 / z
    c = a + (n - 1) * b * rho
    norm = np.sqrt(
        np.maximum(a**2 + 2 * (n - 1) * a * b * rho + (n - 1) * b**2 * (1 + (n - 2) * rho), 0)
    )
    rate = 2 * (1 + (n - 1) * rho) / z  # F(ρ)/(1 − ρ)
    return {"c": c, "norm": norm, "rate": rate, "a_minus_b": a - b}


def placement_equiangular(
    placement: str,
    beta: float,
    n: int,
    ts,
    *,
    rho0: float = 0.0,
    r0: float = 1.0,
    alpha: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ρ(t), r(t)) of n equiangular tokens (Q = K = V = I) under a placement: "post_ln" (SA,
    (6.9)), "pre_ln", "peri_ln", "ngpt" (with `alpha`). Solved for u = −log(1 − ρ) and log r
    (scipy DOP853, rtol 1e-12), so 1 − ρ keeps its relative accuracy near 1. Post-LN and nGPT
    keep r = r0 = 1 (pass r0 = 1). `ts` start at 0."""
    if placement not in PLACEMENTS:
        raise ValueError(f"`placement` must be one of {PLACEMENTS}, got {placement!r}.")
    n = _check_start(n, float(rho0), float(r0), float(beta))
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` must be finite and > 0, got {alpha!r}.")
    ts = np.asarray(ts, float)
    if ts.ndim != 1 or ts[0] < 0 or np.any(np.diff(ts) < 0):
        raise ValueError("`ts` must be a non-decreasing 1-d array of times >= 0.")

    def rhs(t, y):
        u, log_r = y
        rho = -np.expm1(-u)
        terms = equiangular_terms(rho, n, beta)
        r = np.exp(log_r)
        if placement == "post_ln":
            return [terms["rate"], 0.0]
        if placement == "pre_ln":
            return [terms["rate"] / r, terms["c"] / r]
        if placement == "peri_ln":
            return [terms["rate"] / (r * terms["norm"]), terms["c"] / (r * terms["norm"])]
        return [alpha * terms["rate"] / terms["norm"], 0.0]

    y0 = [-np.log1p(-rho0), np.log(r0)]
    t_span = (0.0, max(float(ts[-1]), 1e-300))
    solution = solve_ivp(rhs, t_span, y0, t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14)
    if not solution.success:
        raise RuntimeError(f"the equiangular ODE failed: {solution.message}")
    u, log_r = solution.y
    return -np.expm1(-u), np.exp(log_r)


def pre_ln_limit_constant(beta: float, n: int, *, rho0: float = 0.0, r0: float = 1.0) -> float:
    """L = lim (1 − ρ) r² for Pre-LN and Peri-LN from equiangular (ρ0, r0) (so 1 − ρ ~ L/t²):
    L = (1−ρ0) r0² exp(∫_{ρ0}^1 (e^{β(1−ρ)} − 1)/((1−ρ)(1+(n−1)ρ)) dρ); L = (1−ρ0) r0² at β = 0."""
    n = _check_start(n, float(rho0), float(r0), float(beta))

    def integrand(rho):
        s = 1 - rho
        ratio = np.expm1(beta * s) / s if s > 0 else beta
        return ratio / (1 + (n - 1) * rho)

    integral, _ = quad(integrand, rho0, 1.0, epsabs=1e-13, epsrel=1e-12, limit=200)
    return as_output((1 - rho0) * r0**2 * np.exp(integral))


def gaussian_moments(m0, sigma0, beta: float, ts, *, Q=None, K=None, V=None):
    """(m(t), Σ(t)) of the Gaussian law of attention without normalisation (n → ∞):
    ṁ = V(m + βΣKᵀQm), Σ̇ = AΣ + ΣAᵀ, A = βVΣKᵀQ (None: identity). scipy DOP853, float64.

    **Returns:** m of shape (T, d), Σ of shape (T, d, d)."""
    m0 = np.asarray(m0, float)
    sigma0 = np.asarray(sigma0, float)
    d = m0.shape[0]
    if m0.shape != (d,) or sigma0.shape != (d, d):
        raise ValueError(f"`m0` must be (d,) and `sigma0` (d, d), got {m0.shape}, {sigma0.shape}.")
    eye = np.eye(d)
    Q, K, V = (eye if w is None else np.asarray(w, float) for w in (Q, K, V))
    ts = np.asarray(ts, float)

    def rhs(t, y):
        m, sigma = y[:d], y[d:].reshape(d, d)
        A = beta * V @ sigma @ K.T @ Q
        return np.concatenate(
            [V @ (m + beta * sigma @ K.T @ Q @ m), (A @ sigma + sigma @ A.T).ravel()]
        )

    solution = solve_ivp(
        rhs, (ts[0], ts[-1]), np.concatenate([m0, sigma0.ravel()]), t_eval=ts,
        method="DOP853", rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    if not solution.success:
        raise RuntimeError(f"the moment ODE failed: {solution.message}")
    y = solution.y.T
    return y[:, :d], y[:, d:].reshape(-1, d, d)

"""log ₀F₁(; μ+1; β²/4) = log(Γ(μ+1) (2/β)^μ I_μ(β)), stable for every order and β >= 0.

This normalised Bessel function is the mean of e^{β<x,e>} under the uniform measure on
S^{d-1} when μ = d/2 - 1, and with μ = ℓ + d/2 - 1 it gives the Funk–Hecke coefficients of
e^{βt}. It is 1 at β = 0 and grows like e^β, so it is handled through its logarithm.
"""

import numpy as np
from scipy import special

# Below this scaled value `ive` is near underflow and loses relative accuracy.
_TINY_SCALED = 1e-250


def _log_series(mu: float, beta: float, start: int) -> float:
    """log Σ_{k>=start} (β²/4)^k Γ(μ+1) / (k! Γ(μ+1+k)), summed in log space."""
    z = beta * beta / 4
    peak = (np.hypot(mu, beta) - mu) / 2  # the largest term sits near k(μ+k) = z
    k = np.arange(start, start + int(2 * peak) + 80, dtype=float)
    logs = k * np.log(z) - special.gammaln(k + 1) - special.gammaln(mu + 1 + k)
    return float(special.logsumexp(logs) + special.gammaln(mu + 1))


def _log_normalized_bessel(mu: float, beta: float) -> float:
    if beta == 0:
        return 0.0
    if beta * beta / 4 <= 4 * (mu + 1) + 16:
        return _log_series(mu, beta, 0)  # few terms, full relative accuracy near β = 0
    scaled = special.ive(mu, beta)
    if not scaled > _TINY_SCALED:
        return _log_series(mu, beta, 0)
    return float(np.log(scaled) + beta + mu * np.log(2 / beta) + special.gammaln(mu + 1))


def _normalized_bessel_minus_one(mu: float, beta: float) -> float:
    """₀F₁(; μ+1; β²/4) - 1 without cancellation for small β."""
    if beta == 0:
        return 0.0
    if beta * beta / 4 <= mu + 1:
        return float(np.exp(_log_series(mu, beta, 1)))
    return float(np.expm1(_log_normalized_bessel(mu, beta)))


log_normalized_bessel = np.vectorize(_log_normalized_bessel, otypes=[float])
normalized_bessel_minus_one = np.vectorize(_normalized_bessel_minus_one, otypes=[float])

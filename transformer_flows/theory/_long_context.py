"""Long context: one attention layer at β_n = γ log n on equiangular tokens.

Chen, Lin, Polyanskiy, Rigollet, "Critical attention scaling in long-context transformers"
(arXiv:2510.05554). n unit tokens y_i with <y_i, y_j> = ρ (i ≠ j), Q = K = V = I, attention
output A_i = Σ_j softmax_j(β<y_i, y_j>) y_j, optionally plus a residual r·y_i (the paper's
layer is ATT(y_i) + α x_i with |x_i| = √q, so r = α√q). The output directions
θ_i = u_i/|u_i|, u_i = A_i + r y_i, are again equiangular, with a cosine in closed form
(derived here, see docs/models.md "Long context"):

  with k = e^{β(1-ρ)} (self weight over other weight), σ = 1 + (n-1)ρ = <y_i, Σ_j y_j>,
  p = (k - 1) + r(k + n - 1) and E = σ (2/p + n/p²),
      <θ_i, θ_j> = ρ + (1 - ρ) E/(1 + E),      1 - <θ_i, θ_j> = (1 - ρ)/(1 + E).

Everything is evaluated through log p and log E (`scipy.special.expit`), so any n and γ
work without overflow. As n → ∞ with β = γ log n, k/n → c ∈ {0, 1, ∞} as γ(1-ρ) <, =, > 1,
and the cosine tends to ρ(1+π)²/(π² + 2ρπ + ρ) with π = c(1+r) + r: for r = 0 (the
attention output alone, the paper's three regimes) 1, 4ρ/(1+3ρ) and ρ.

numpy/scipy float64 functions (not jit-able); they broadcast over array arguments and return
float64 numpy arrays, or Python floats for scalar arguments.
"""

import numpy as np
from scipy import special

from ._checks import Numbers, as_output, check_count_array

# γ(1-ρ) within this of 1 counts as critical, so that gamma=critical_gamma(rho) lands on the
# critical regime despite rounding (γ(1-ρ) is then 1 to a few ulps).
_CRITICAL_TOLERANCE = 1e-12


def _finite(value, name: str, *, minimum: float | None = None, hint: str = "") -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)) or (minimum is not None and np.any(array < minimum)):
        bound = "" if minimum is None else f" and >= {minimum:g}"
        raise ValueError(f"`{name}` must be finite{bound}, got {value!r}.{hint}")
    return array


def _check_rho_open(rho) -> np.ndarray:
    array = np.asarray(rho, dtype=float)
    if not np.all((array > 0) & (array < 1)):
        raise ValueError(
            f"`rho` must lie in (0, 1) for the n -> infinity limit, got {rho!r}. At rho = 0 "
            "the transition sits at gamma = 1/2, not 1/(1 - rho) (sigma = 1 does not grow "
            "with n); at rho = 1 the tokens coincide. Use `long_context_cosine` for those."
        )
    return array


def _log_expm1(x):
    """log(e^x - 1) for x >= 0 without overflow (-inf at x = 0)."""
    with np.errstate(divide="ignore", over="ignore"):
        small = np.log(np.expm1(np.minimum(x, 30.0)))
        large = x + np.log1p(-np.exp(-np.maximum(x, 30.0)))
    return np.where(x > 30.0, large, small)


def critical_gamma(rho: Numbers) -> np.ndarray | float:
    """γ_c = 1/(1 - ρ): β_n = γ log n with γ below it collapses the equiangular tokens
    (output cosine → 1), above it leaves them as they are (→ ρ). `rho` in (0, 1)."""
    rho = _check_rho_open(rho)
    return as_output(1 / (1 - rho))


def long_context_limit(
    gamma: Numbers, rho: Numbers, *, residual: Numbers = 0.0
) -> np.ndarray | float:
    """lim_{n→∞} <θ_i, θ_j> of one attention layer at β_n = γ log n on equiangular tokens.

    With κ = γ(1-ρ): c = lim e^{β_n(1-ρ)}/n is 0, 1, ∞ for κ <, =, > 1 (κ within 1e-12 of 1
    counts as critical), π = c(1 + r) + r with r = `residual`, and the limit is
    ρ(1+π)²/(π² + 2ρπ + ρ). For r = 0 (the attention output alone): 1 below, 4ρ/(1+3ρ) at,
    ρ above γ_c = 1/(1-ρ) (Chen–Lin–Polyanskiy–Rigollet). For r > 0 the subcritical limit is
    ρ(1+r)²/(r² + 2ρr + ρ) < 1: the residual keeps the tokens apart.

    **Arguments:** `gamma` >= 0, `rho` in (0, 1), `residual` >= 0; they broadcast.
    """
    gamma = _finite(gamma, "gamma", minimum=0.0)
    rho = _check_rho_open(rho)
    residual = _finite(residual, "residual", minimum=0.0)
    gamma, rho, residual = np.broadcast_arrays(gamma, rho, residual)
    kappa = gamma * (1 - rho)
    critical = np.abs(kappa - 1) <= _CRITICAL_TOLERANCE
    c = np.where(critical, 1.0, np.where(kappa < 1, 0.0, np.inf))
    with np.errstate(invalid="ignore"):
        pi = c * (1 + residual) + residual
        finite = rho * (1 + pi) ** 2 / (pi**2 + 2 * rho * pi + rho)
    return as_output(np.where(np.isinf(pi), rho, finite))


def long_context_cosine(
    n: Numbers, gamma: Numbers, rho: Numbers, *, residual: Numbers = 0.0
) -> np.ndarray | float:
    """The exact output cosine <θ_i, θ_j> of one attention layer at β = γ log n on n
    equiangular unit tokens with cosine ρ (formula in the module docstring).

    **Arguments** (broadcast together):
    - `n`: the number of tokens (integers >= 2; float arrays of whole numbers such as 1e12
      are accepted).
    - `gamma`: >= 0; β = γ log n.
    - `rho`: in [-1/(n-1), 1], where n equiangular unit vectors exist.
    - `residual`: r >= 0 in u_i = A_i + r y_i (0: the attention output alone).

    At ρ = -1/(n-1) (a centred simplex) with β = 0 and r = 0 the output is the zero vector
    and has no direction: that combination is refused.
    """
    n = check_count_array(n, "n", 2).astype(float)
    gamma = _finite(gamma, "gamma", minimum=0.0, hint=" Pass beta = gamma log n with gamma >= 0.")
    rho = _finite(rho, "rho")
    residual = _finite(residual, "residual", minimum=0.0)
    n, gamma, rho, residual = np.broadcast_arrays(n, gamma, rho, residual)
    # Tolerate rounding in ρ = -1/(n-1) itself.
    if np.any((rho > 1) | ((n - 1) * rho < -1 - 1e-12)):
        raise ValueError(
            f"`rho` must lie in [-1/(n-1), 1] (n equiangular unit vectors exist only there: the "
            f"Gram matrix (1-rho) I + rho 11^T must be positive semidefinite), got rho={rho!r} "
            f"with n={n!r}."
        )
    log_n = np.log(n)
    log_k = gamma * (1 - rho) * log_n  # k = e^{β(1-ρ)}
    with np.errstate(divide="ignore"):
        log_p = np.logaddexp(
            _log_expm1(log_k), np.log(residual) + np.logaddexp(log_k, np.log(n - 1))
        )
        log_sigma = np.log(np.maximum(1 + (n - 1) * rho, 0.0))
    if np.any(np.isneginf(log_p) & np.isneginf(log_sigma)):
        raise ValueError(
            "At rho = -1/(n-1) (centred simplex) with gamma = 0 (or rho = 1) and residual = 0 "
            "the attention output is the zero vector, which has no direction; use rho > "
            "-1/(n-1), gamma > 0 or residual > 0."
        )
    log_e = log_sigma + np.logaddexp(np.log(2.0) - log_p, log_n - 2 * log_p)
    return as_output(rho + (1 - rho) * special.expit(log_e))


def long_context_correction(n: Numbers, gamma: Numbers, rho: Numbers) -> np.ndarray | float:
    """The leading term of <θ_i, θ_j>(n) − lim (residual 0), derived from the exact formula
    with k = n^κ, κ = γ(1-ρ):

    - κ < 1: −(1-ρ)(k-1)²/(ρ n²) ≈ −((1-ρ)/ρ) n^{−2(1−κ)}  (relative error O(n^{κ−1} + 1/n));
    - κ = 1: (1-ρ)(3+ρ)/((1+3ρ)² n)                      (relative error O(1/n));
    - κ > 1: 2ρ(1-ρ) n/k = 2ρ(1-ρ) n^{−(κ−1)}            (relative error O(n^{1−κ} + 1/n)).

    The rates n^{−2(1−κ)} and n^{−(κ−1)} vanish at κ = 1 (the approach is slow near γ_c,
    where the 1/n law of the critical case takes over only for n^{|κ−1|} ≫ 1).
    `n` >= 2, `gamma` >= 0, `rho` in (0, 1); they broadcast.
    """
    n = check_count_array(n, "n", 2).astype(float)
    gamma = _finite(gamma, "gamma", minimum=0.0)
    rho = _check_rho_open(rho)
    n, gamma, rho = np.broadcast_arrays(n, gamma, rho)
    kappa = gamma * (1 - rho)
    log_n = np.log(n)
    log_k = kappa * log_n
    critical = np.abs(kappa - 1) <= _CRITICAL_TOLERANCE
    with np.errstate(divide="ignore", over="ignore"):
        below = -(1 - rho) / rho * np.exp(2 * _log_expm1(log_k) - 2 * log_n)
        above = 2 * rho * (1 - rho) * np.exp(log_n - log_k)
    at = (1 - rho) * (3 + rho) / ((1 + 3 * rho) ** 2 * n)
    return as_output(np.where(critical, at, np.where(kappa < 1, below, above)))

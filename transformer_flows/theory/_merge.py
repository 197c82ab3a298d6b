"""The exact merge time of two coincident clusters on the circle (USA/SA energy flow, time τ).

Two tight clusters of m_a and m_b of n tokens at angle D stay tight (coincident tokens stay
coincident), and their gap obeys dD/dτ = -((m_a + m_b)/n) e^{-β(1 - cos D)} sin D in the
rescaled time τ = e^{β}t of the staircase. With u = 1 - cos D, sin²D = u(2 - u) and
1/(u(2 - u)) = (1/u + 1/(2 - u))/2, so

    τ(D₀ → D₁) = n/(2(m_a + m_b)) · [Ei(βu₀) - Ei(βu₁) + e^{2β}(E₁(β(2-u₀)) - E₁(β(2-u₁)))].

Laplace's method (β(1 - cos D₀) ≫ 1 and β(1 + cos D₀) ≫ 1) keeps only the endpoint D₀:
τ ≈ n e^{β(1 - cos D₀)}/((m_a + m_b) β sin²D₀). Near antipodal clusters (β(1 + cos D₀) ≲ 1)
sin²D₀ → 0 and that estimate blows up, while the exact time grows only like
n/(2(m_a + m_b)) e^{2β}(-γ_E - ln(β(1 + cos D₀))); exactly antipodal clusters never merge.
"""

import math
from collections.abc import Sequence

import numpy as np
import scipy.special

from ._checks import Numbers, as_output, check_beta_numpy

# Below this argument e^{±x} and Ei/E₁ are evaluated directly in float64; above it, the scaled
# functions e^{-x}Ei(x) and e^{x}E₁(x) come from their asymptotic series (x ≥ 600: the terms
# k!/x^k fall below 1e-16 long before the series diverges).
_DIRECT = 600.0
_TERMS = 40


def _asymptotic(x, sign: float):
    """Σ_k (sign)^k k!/x^{k+1}: e^{-x}Ei(x) for sign = +1, e^{x}E₁(x) for sign = -1."""
    total, term = np.zeros_like(x), 1.0 / x
    for k in range(_TERMS):
        total = total + term
        term = term * sign * (k + 1) / x
    return total


def _scaled_ei(x):
    """e^{-x} Ei(x) for x > 0 (may be negative below x ≈ 0.3725, where Ei changes sign)."""
    large = x >= _DIRECT
    safe = np.where(large, 1.0, x)
    return np.where(
        large,
        _asymptotic(np.where(large, x, _DIRECT), 1.0),
        scipy.special.expi(safe) * np.exp(-safe),
    )


def _scaled_e1(z):
    """e^{z} E₁(z) for z ≥ 0 (infinite at z = 0)."""
    large = z >= _DIRECT
    safe = np.where(large, 1.0, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.where(safe == 0, np.inf, scipy.special.exp1(safe) * np.exp(safe))
    return np.where(large, _asymptotic(np.where(large, z, _DIRECT), -1.0), direct)


def two_cluster_merge_time(
    beta: Numbers,
    D0: Numbers,
    D1: Numbers = math.pi / 2,
    *,
    masses: Sequence[float | int],
    n: int | float | None = None,
    method: str = "exact",
    log10: bool = False,
) -> np.ndarray | float:
    """Time τ (in the staircase's rescaled time τ = e^{β}t) for two tight clusters to close
    their gap from `D0` to `D1` (0 < D1 < D0 ≤ π, radians).

    **Arguments:**

    - `beta`: the inverse temperature β ≥ 0 (broadcasts with `D0`, `D1`).
    - `masses`: the clusters' token counts (m_a, m_b), or their fractions of n.
    - `n`: the number of tokens (default m_a + m_b: only the two clusters).
    - `method`: "exact" (the closed form above) or "laplace" (the endpoint estimate
      n e^{β(1 - cos D₀)}/((m_a + m_b) β sin²D₀), which ignores `D1` and is wrong near π).
    - `log10`: return log₁₀ τ, computed in log space (finite for β far beyond the float64
      range of e^{2β}).

    `D0 = π` gives τ = ∞: antipodal clusters are an equilibrium. The default `D1 = π/2`
    marks a merge: from there the gap closes in τ = O(n/(m_a + m_b)), negligible against
    the plateau's exponentially long time (the time to reach D1 → 0 diverges like ln(1/D1),
    the exponential approach to consensus).
    """
    beta = check_beta_numpy(beta)
    if method not in ("exact", "laplace"):
        raise ValueError(f"`method` must be 'exact' or 'laplace', got {method!r}.")
    if len(masses) != 2 or not all(np.isfinite(m) and m > 0 for m in masses):
        raise ValueError(f"`masses` must be two positive numbers (m_a, m_b), got {masses!r}.")
    total = float(sum(masses))
    n = total if n is None else n
    if not (np.isfinite(n) and n >= total):
        raise ValueError(
            f"`n` must be finite and at least m_a + m_b = {total}, got {n!r} (the tokens "
            "of both clusters are among the n)."
        )
    D0, D1 = np.asarray(D0, dtype=float), np.asarray(D1, dtype=float)
    if not np.all((D0 > 0) & (D0 <= np.pi)):
        raise ValueError(f"`D0` must lie in (0, π] (radians), got {D0!r}.")
    if not np.all((D1 > 0) & (D1 < D0)):
        raise ValueError(
            f"`D1` must lie in (0, D0) (the gap closes from D0 to D1, radians), got {D1!r}."
        )
    log_prefactor = np.log(n / total)
    if method == "laplace":
        with np.errstate(divide="ignore"):
            log_tau = beta * (1 - np.cos(D0)) + log_prefactor - np.log(beta * np.sin(D0) ** 2)
    else:
        log_tau = log_prefactor - np.log(2.0) + _log_bracket(beta, D0, D1)
    if log10:
        return as_output(log_tau / np.log(10))
    with np.errstate(over="ignore"):
        return as_output(np.exp(log_tau))


def _log_bracket(beta, D0, D1):
    """ln of the bracket Ei(βu₀) - Ei(βu₁) + e^{2β}(E₁(βv₀) - E₁(βv₁)), v = 2 - u = 1 + cos D
    (taken as 2cos²(D/2), exact near D = π). For 2β below the float64 exponent range it is
    evaluated as written; beyond, as e^{βu₀}s₀ - e^{βu₁}s₁ with the scaled
    s = e^{-βu}Ei(βu) + e^{βv}E₁(βv), so that no term overflows. At β = 0 it is the limit
    2 ln(tan(D₀/2)/tan(D₁/2))."""
    # u = 2 sin²(D/2), not 1 - cos D: exact for small gaps (1 - cos(1e-8) is 0 in float64,
    # which made the time to a gap D1 <= 1e-8 infinite).
    u0, u1 = 2 * np.sin(D0 / 2) ** 2, 2 * np.sin(D1 / 2) ** 2
    v0, v1 = 2 * np.cos(D0 / 2) ** 2, 2 * np.cos(D1 / 2) ** 2
    small = 2 * beta < _DIRECT
    b = np.where(small, beta, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = np.log(
            scipy.special.expi(b * u0)
            - scipy.special.expi(b * u1)
            + np.exp(2 * b) * (scipy.special.exp1(b * v0) - scipy.special.exp1(b * v1))
        )
        at_zero = np.log(2 * np.log(np.tan(D0 / 2) / np.tan(D1 / 2)))
        direct = np.where(beta == 0, at_zero, np.where(v0 == 0, np.inf, direct))
        big = np.where(small, _DIRECT, beta)
        s0 = _scaled_ei(big * u0) + _scaled_e1(big * v0)
        s1 = _scaled_ei(big * u1) + _scaled_e1(big * v1)
        scaled = big * u0 + np.log(s0) + np.log1p(-np.exp(big * (u1 - u0)) * s1 / s0)
    return np.where(small, direct, scaled)

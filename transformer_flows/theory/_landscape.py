"""Appendix B: the energy landscape on the circle and the large-β clustering threshold.

On the circle, ∂_{θ_i}∂_{θ_j} E_β = g(θ_i - θ_j)/n² (i ≠ j) with
g(τ) = (cos τ - β sin²τ) e^{β cos τ}, which is negative for |τ| > τ*_β. In S^{d-1} the
analogous function is e^{β cos τ}((d-1) cos τ - β sin²τ). numpy functions (broadcasting,
float64 arrays; floats for scalar arguments).
"""

import numpy as np

from ._checks import Numbers, as_output, check_beta_numpy, check_count


def critical_angle(beta: Numbers, d: int = 2) -> np.ndarray | float:
    """τ*_β ∈ (0, π/2]: the root of β sin²τ = (d-1) cos τ (π/2 at β = 0, ~ sqrt((d-1)/β)
    for large β). Closed form: cos τ* = 2β / ((d-1) + sqrt((d-1)² + 4β²)), written as
    τ* = atan2(sqrt(d-1), sqrt(β cos τ*)), accurate for all β."""
    beta = check_beta_numpy(beta)
    d = check_count(d, "d", 2)
    cosine = 2 * beta / ((d - 1) + np.sqrt((d - 1) ** 2 + 4 * beta**2))
    # tan²τ = (d-1)/(β cos τ) from the equation; avoids arccos near 1 for large β.
    return as_output(np.arctan2(np.sqrt(d - 1.0), np.sqrt(beta * cosine)))


def large_beta_threshold(n: int, d: int = 2) -> float:
    """β_B(n): the smallest β with (n-1) τ*_β <= π/2, i.e. (d-1) cos τ / sin²τ at
    τ = π/(2(n-1)) (App. B's proof of Thm 5.1 on the circle: for β > β_B(n) every critical
    point other than consensus is a strict saddle, so a.e. start clusters).

    d = 2: n=3: 1.41, 4: 3.46, 8: 19.69, 16: 91.02, 32: 389.3, 64: 1608.4 (≈ 4(n-1)²/π²,
    about four times the n²/π² printed in the paper, typo T3). For d > 2 the same condition
    with the general τ*; n = 2 gives 0.
    """
    n = check_count(n, "n", 2)
    d = check_count(d, "d", 2)
    tau = np.pi / (2 * (n - 1))
    return float((d - 1) * np.cos(tau) / np.sin(tau) ** 2)


def landscape_g(
    tau: Numbers, beta: Numbers, d: int = 2, *, rescaled: bool = False
) -> np.ndarray | float:
    """g(τ) = e^{β cos τ} ((d-1) cos τ - β sin²τ); for d = 2, (cos τ - β sin²τ) e^{β cos τ}
    (Fig. 6 plots it for β = 2 and 6). Negative exactly for τ*_β < |τ| <= π.

    `rescaled=True` returns e^{-β} g(τ) = e^{-β(1 - cos τ)} ((d-1) cos τ - β sin²τ), finite
    for every β (g itself exceeds the float64 range near τ = 0 once β ≳ 709, e.g. at
    β_B(64) ≈ 1608); the same sign and zeros. Evaluated as sign · exp(log-magnitude), so g
    is finite wherever its value is representable, and 1 - cos τ = 2 sin²(τ/2) keeps the
    rescaled exponent accurate near τ = 0.
    """
    beta = check_beta_numpy(beta)
    d = check_count(d, "d", 2)
    tau = np.asarray(tau, dtype=float)
    factor = (d - 1) * np.cos(tau) - beta * np.sin(tau) ** 2
    exponent = -2 * beta * np.sin(tau / 2) ** 2 + (0.0 if rescaled else beta)
    with np.errstate(divide="ignore", over="ignore"):
        magnitude = np.exp(exponent + np.log(np.abs(factor)))
    return as_output(np.sign(factor) * magnitude)

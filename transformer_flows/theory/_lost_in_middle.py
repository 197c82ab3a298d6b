"""The lost-in-the-middle retrieval profile of causal ALiBi dynamics on the circle (Duerinckx,
Geshkovski, Rossi, arXiv:2605.09213; formulas as in the authors' code, written anew here).

Tokens θ_1 … θ_N i.i.d. uniform on the circle, token j moved by its predecessors:
θ̇_j = Σ_{k<j} w_jk h(θ_j − θ_k), h(u) = −β sin u e^{β cos u} = d/du e^{β cos u}, and ALiBi
position weights w_jk = e^{−λ(j−k)/N}/Σ_{l<j} e^{−λ(j−l)/N}. Linearised about independence (the
kinetic limit N → ∞, source position s ∈ (0, 1), last token at 1), the Fourier mode k of the last
token at time t correlates with the source's initial mode k through

  g_k(t; s) = [λ e^{λs}/(e^λ − 1)] ψ_{a_k t}(Y_λ(s)),   Y_λ(s) = log((e^λ − 1)/(e^{λs} − 1)),
  ψ_c(y) = Σ_{m≥0} c^{m+1} y^m/(m!(m+1)!) = √(c/y) I₁(2√(cy)),   a_k = k² I_k(β)

(h = −2Σ_k k I_k(β) sin ku gives the rate a_k), i.e. N E[cos k(θ_N(t) − θ_{sN}(0))] → g_k(t; s).
The soft-accuracy ("retrieval") profile weighs the modes by ω_{k,M} = exp(−π²k²/(2M²)) (the
Fourier coefficients of a wrapped Gaussian of width π/M):

  S_t(s) = Σ_{k=1}^{k_max} ω_{k,M} g_k(t; s),

and its slope at s = 1 changes sign at t_crit = 2(1 − e^{−λ}) Σ ω_k a_k / Σ ω_k a_k².

numpy/scipy, float64.
"""

import numpy as np
from scipy import special

from ._checks import as_output, check_count


def _check(beta, lam, M):
    for name, value in (("beta", beta), ("lam", lam), ("M", M)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be finite and > 0, got {value!r}.")


def _modes(beta: float, M: float, k_max: int):
    k = np.arange(1, k_max + 1)
    return np.exp(-0.5 * (np.pi * k / M) ** 2), k**2 * special.iv(k, beta)


def _psi(c, y):
    """ψ_c(y) = √(c/y) I₁(2√(cy)) (= c at y = 0), scaled Bessel for large arguments."""
    z = 2 * np.sqrt(c * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(z > 1e-8, 2 * c * special.ive(1, z) * np.exp(z) / np.where(z > 0, z, 1), c)
    return value


def retrieval_profile(s, t: float, beta: float, lam: float, *, M: float = 8.0, k_max: int = 20):
    """S_t(s) of the module doc at source positions s ∈ (0, 1) (array), time t >= 0.
    Defaults M = 8, k_max = 20 are the authors'."""
    _check(beta, lam, M)
    k_max = check_count(k_max, "k_max", 1)
    s = np.asarray(s, float)
    if np.any((s <= 0) | (s >= 1)):
        raise ValueError(f"`s` must lie in (0, 1) (relative source position), got {s!r}.")
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"`t` must be finite and >= 0, got {t!r}.")
    omega, a = _modes(beta, M, k_max)
    y = np.log(np.expm1(lam) / np.expm1(lam * s))
    coeff = lam * np.exp(lam * s) / np.expm1(lam)
    total = sum(w * coeff * _psi(ak * t, y) for w, ak in zip(omega, a, strict=True))
    return as_output(total)


def retrieval_modes(s, t: float, beta: float, lam: float, *, k_max: int = 20) -> np.ndarray:
    """g_k(t; s) for k = 1 … k_max: shape (k_max, len(s)) (the profile without the ω weights)."""
    _check(beta, lam, 1.0)
    s = np.atleast_1d(np.asarray(s, float))
    _, a = _modes(beta, 1.0, check_count(k_max, "k_max", 1))
    y = np.log(np.expm1(lam) / np.expm1(lam * s))
    coeff = lam * np.exp(lam * s) / np.expm1(lam)
    return np.stack([coeff * _psi(ak * t, y) for ak in a])


def retrieval_t_crit(beta: float, lam: float, *, M: float = 8.0, k_max: int = 20) -> float:
    """t_crit = 2(1 − e^{−λ}) Σ ω_k a_k / Σ ω_k a_k² (the right-end slope of S_t changes sign)."""
    _check(beta, lam, M)
    omega, a = _modes(beta, M, check_count(k_max, "k_max", 1))
    return float(2 * -np.expm1(-lam) * np.sum(omega * a) / np.sum(omega * a**2))

"""The uniform measure σ_d on S^{d-1}: its interaction energy and its linear instability.

Both come from the Funk–Hecke coefficients of e^{βt}:
  ∫ e^{β<x,e>} P_ℓ(<x,e>) dσ_d(x) = Γ(d/2) (2/β)^{(d-2)/2} I_{ℓ+(d-2)/2}(β),
(P_ℓ the Legendre/Gegenbauer polynomial normalised to P_ℓ(1) = 1), computed through the
log of the normalised Bessel function so that large β neither overflows nor underflows.
These are numpy/scipy functions (not jit-able); they broadcast over array arguments and
return float64 (int for `selected_mode`) numpy arrays, or Python numbers for scalar
arguments.
"""

import numpy as np
from scipy import special

from ._bessel import log_normalized_bessel, normalized_bessel_minus_one
from ._checks import (
    Numbers,
    as_output,
    check_beta_numpy,
    check_count,
    check_count_array,
    check_model,
)


def uniform_energy(
    beta: Numbers,
    d: int,
    *,
    shifted: bool = False,
    rescaled: bool = False,
) -> np.ndarray | float:
    """E_β[σ_d] = (1/(2β)) ∫ e^{β<x,e>} dσ_d(x) = (1/(2β)) Γ(d/2) (2/β)^{d/2-1} I_{d/2-1}(β).

    This is I_0(β)/(2β) for d = 2 and sinh(β)/(2β²) for d = 3: the minimum of E_β over
    probability measures (Prop. 3.4), and the n → ∞ value of `transformer_flows.energy` at
    uniformly spread tokens. `shifted` and `rescaled` mean what they mean in
    `transformer_flows.energy`: subtract 1/(2β) (the energy of (1/(2β)) ∬ (e^{β<x,x'>} - 1)),
    multiply by e^{-β} (finite for any β; without it the value overflows to inf beyond
    β ≈ 709 in float64). At β = 0 the value is the shifted limit
    (1/2) ∬ <x,x'> dσ dσ = 0, as in `energy`.
    """
    beta = check_beta_numpy(beta)
    d = check_count(d, "d", 2)
    order = d / 2 - 1
    safe = np.where(beta > 0, beta, 1.0)
    if shifted:
        if rescaled:
            mean = np.exp(log_normalized_bessel(order, beta) - beta) - np.exp(-beta)
        else:
            mean = normalized_bessel_minus_one(order, beta)
    else:
        log_mean = log_normalized_bessel(order, beta)
        with np.errstate(over="ignore"):  # e^β overflows for β > ~709: the value is inf
            mean = np.exp(log_mean - beta) if rescaled else np.exp(log_mean)
    return as_output(np.where(beta > 0, mean / (2 * safe), 0.0))


def _log_growth_rate(ell: np.ndarray, beta: np.ndarray, d: int, model: str):
    """log λ_ℓ, written as ℓ(ℓ+d-2) Γ(ν+1)/Γ(ℓ+ν+1) (β/2)^{ℓ-1} ₀F₁(;ℓ+ν+1;β²/4) / 2 (USA),
    ν = (d-2)/2, which is regular at β = 0 (λ_1 = (d-1)/d there, λ_ℓ = 0 for ℓ >= 2)."""
    order = (d - 2) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        power = np.where(ell == 1, 0.0, (ell - 1) * np.log(beta / 2))
    log_rate = (
        np.log(ell * (ell + d - 2.0))
        + special.gammaln(order + 1)
        - special.gammaln(ell + order + 1)
        + power
        + log_normalized_bessel(ell + order, beta)
        - np.log(2.0)
    )
    if model == "SA":
        # SA divides the USA field by Z = ∫ e^{β<x,y>} dσ_d(y) = ₀F₁(;ν+1;β²/4) at σ_d.
        log_rate = log_rate - log_normalized_bessel(order, beta)
    return log_rate


def growth_rate(
    ell: Numbers,
    beta: Numbers,
    d: int,
    model: str,
) -> np.ndarray | float:
    """Linear growth rate of spherical-harmonic mode ℓ >= 1 around the uniform measure σ_d.

    A density 1 + ε Y_ℓ (Y_ℓ of degree ℓ) of the mean-field equation grows like e^{λ_ℓ t}:
    - USA: λ_ℓ = ℓ(ℓ+d-2) Γ(d/2) (2/β)^{(d-2)/2} I_{ℓ+(d-2)/2}(β) / β;
    - SA: the same divided by Γ(d/2) (2/β)^{(d-2)/2} I_{(d-2)/2}(β) (the softmax
      normaliser at σ_d).
    For d = 2: ℓ² I_ℓ(β)/β and ℓ² I_ℓ(β)/(β I_0(β)). At β = 0, λ_1 = (d-1)/d (1/2 on the
    circle, Kuramoto's K/2) and λ_ℓ = 0 for ℓ >= 2. Derived (docs/mathematics.md §4.13), not in
    the paper. `ell` and `beta` broadcast.
    """
    check_model(model)
    d = check_count(d, "d", 2)
    ell = check_count_array(ell, "ell", 1)
    beta = check_beta_numpy(beta)
    ell, beta = np.broadcast_arrays(ell, beta)
    return as_output(np.exp(_log_growth_rate(ell, beta, d, model)))


def selected_mode(
    beta: Numbers,
    d: int,
    model: str = "SA",
    max_mode: int | None = None,
) -> np.ndarray | int:
    """The fastest-growing mode argmax_{ℓ >= 1} λ_ℓ(β) (the same for SA and USA, whose rates
    differ by an ℓ-independent factor): a rough early-time predictor of how many clusters
    form from near-uniform tokens (d = 2: 1 for β = 1, 2 for β = 2, 3, 3 for β = 4..6,
    4 for β = 7..9, 5 for β = 12). For large β it is ≈ sqrt(2β) on the circle.

    `max_mode`: the largest ℓ searched; default ceil(4 sqrt(β + 1)) + 16, far beyond the
    maximiser. An error is raised if the maximiser is `max_mode` itself.
    """
    check_model(model)
    d = check_count(d, "d", 2)
    beta = check_beta_numpy(beta)
    if max_mode is None:
        max_mode = int(np.ceil(4 * np.sqrt(np.max(beta, initial=0.0) + 1))) + 16
    max_mode = check_count(max_mode, "max_mode", 1)
    ell = np.arange(1, max_mode + 1)
    log_rates = _log_growth_rate(ell[:, None], beta.reshape(1, -1), d, model)
    best = np.argmax(log_rates, axis=0) + 1
    if max_mode > 1 and np.any(best == max_mode):
        raise ValueError(
            f"The fastest mode reached `max_mode`={max_mode} (beta up to "
            f"{np.max(beta):g}); pass a larger `max_mode`."
        )
    return as_output(best.reshape(beta.shape), dtype=int)

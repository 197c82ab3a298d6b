"""The noisy mean-field model: threshold of the uniform state and stationary order parameter.

Noisy dynamics dX = P_X(drift) dt + sqrt(2/κ) dW on S^{d-1}; Fokker–Planck
  ∂_t μ + div(μ X[μ]) = κ^{-1} Δμ.
Linearising at σ_d, a degree-ℓ harmonic grows at λ_ℓ - ℓ(ℓ+d-2)/κ, where λ_ℓ is the noiseless
rate (`growth_rate`) and ℓ(ℓ+d-2) the eigenvalue of -Δ. Since λ_ℓ = ℓ(ℓ+d-2) ŵ_ℓ with ŵ_ℓ the
Funk–Hecke coefficient of β^{-1} e^{βt} (divided by the normaliser Z for SA), the threshold of
mode ℓ is κ_ℓ = 1/ŵ_ℓ and the smallest is ℓ = 1 (I_{ℓ+d/2-1}(β) decreases in ℓ).

On the circle the stationary densities have zero flux, ρ v[ρ] = κ^{-1} ρ', with v = Φ' for
  USA: Φ[ρ] = β^{-1} (h * ρ),   SA: Φ[ρ] = β^{-1} log(h * ρ),   h(φ) = e^{β cos φ},
so ρ ∝ exp(κ Φ[ρ]) (for SA: ρ ∝ (h * ρ)^{κ/β}). Both are solved here on the branch symmetric
about θ = 0 for the cosine moments r_k = ∫ cos(kθ) ρ (r_1 is the order parameter).
numpy/scipy, float64; not jit-able.
"""

import numpy as np
from scipy import special

from ._bessel import log_normalized_bessel
from ._checks import Numbers, as_output, check_beta_numpy, check_count, check_model
from ._uniform import _log_growth_rate

_BRANCHES = ("clustered", "uniform")


def noise_threshold(
    *,
    beta: Numbers,
    d: int,
    model: str,
    ell: int = 1,
) -> np.ndarray | float:
    """The κ above which the uniform measure σ_d is linearly unstable for the noisy dynamics.

    κ_c = 1/ŵ_1 with ŵ_ℓ = Γ(d/2) (2/β)^{d/2-1} I_{ℓ+d/2-1}(β) / β (USA) and ŵ_ℓ divided by
    Γ(d/2) (2/β)^{d/2-1} I_{d/2-1}(β) (SA, the softmax normaliser at σ_d). On the circle:
    κ_c = β / I_1(β) (USA) and β I_0(β) / I_1(β) (SA). At β = 0 both are d (d = 2: the
    noisy Kuramoto pitchfork at κ = 2). `ell` gives the threshold of mode ℓ instead (it grows
    with ℓ, so ℓ = 1 is the threshold of the uniform state). `beta` broadcasts; float64.
    """
    check_model(model)
    d = check_count(d, "d", 2)
    ell = check_count(ell, "ell", 1)
    beta = check_beta_numpy(beta)
    eigenvalue = ell * (ell + d - 2.0)
    with np.errstate(over="ignore"):
        return as_output(
            np.exp(np.log(eigenvalue) - _log_growth_rate(np.asarray(ell), beta, d, model))
        )


def _log_kernel_coefficients(beta: float, modes: int) -> np.ndarray:
    """log(I_k(β)/β), k = 1..modes, regular at β = 0 (I_k(β)/β = (β/2)^{k-1}/(2 k!) ₀F₁)."""
    k = np.arange(1, modes + 1, dtype=float)
    with np.errstate(divide="ignore"):
        power = np.where(k == 1, 0.0, (k - 1) * np.log(beta / 2) if beta > 0 else -np.inf)
    return power - np.log(2.0) - special.gammaln(k + 1) + log_normalized_bessel(k, beta)


class _Problem:
    """g(θ; r) with ρ ∝ e^g, on a grid of 4K points, for cosine moments r_1..r_K.

    Every sum over the grid is an FFT: with m_j = ∫ cos(jθ) q for a density q on the grid,
    ∫ cos(kθ) cos(jθ) q = (m_{k+j} + m_{|k-j|})/2, so the K×K Jacobian costs O(K²)."""

    def __init__(self, beta: float, kappa: float, model: str, modes: int):
        self.kappa, self.model, self.modes, self.beta = kappa, model, modes, beta
        self.size = 4 * modes
        log_w = _log_kernel_coefficients(beta, modes)
        if model == "USA":
            # κΦ = κ Σ_k 2 (I_k/β) r_k cos kθ + const.
            self.weight = 2 * kappa * np.exp(log_w)
        else:
            # κΦ = (κ/β) log(I_0 + 2 Σ I_k r_k cos kθ) = (κ/β) log1p(β u) + const,
            # u = 2 Σ (I_k/(β I_0)) r_k cos kθ (regular at β = 0, where u = r_1 cos θ).
            self.weight = 2 * np.exp(log_w - log_normalized_bessel(0.0, beta))
        k = np.arange(1, modes + 1)
        self.sum_index = k[:, None] + k[None, :]
        self.diff_index = np.abs(k[:, None] - k[None, :])

    def _cosine_series(self, coefficients: np.ndarray) -> np.ndarray:
        """Σ_k c_k cos(kθ) on the grid."""
        full = np.zeros(self.size // 2 + 1, dtype=complex)
        full[1 : self.modes + 1] = coefficients * (self.size / 2)
        return np.fft.irfft(full, n=self.size)

    def _cosine_moments(self, density: np.ndarray) -> np.ndarray:
        """Σ_grid cos(jθ) q, j = 0..2K."""
        return np.fft.rfft(density).real

    def moments(self, r: np.ndarray):
        """T(r) = ∫ cos(kθ) ρ_r and its Jacobian ∂T_k/∂r_j = Cov_ρ(cos kθ, ∂g/∂r_j)."""
        linear = self._cosine_series(self.weight * r)
        if self.model == "USA" or self.beta == 0:
            scale = 1.0 if self.model == "USA" else self.kappa
            g, inverse_base = scale * linear, None
        else:
            base = 1 + self.beta * linear
            if np.any(base <= 0):
                return None, None
            scale = self.kappa
            g, inverse_base = scale * np.log1p(self.beta * linear) / self.beta, 1 / base
        p = np.exp(g - g.max())
        p = np.where(p > 1e-250, p, 0.0) / p.sum()  # no subnormals: they stall LAPACK
        m = self._cosine_moments(p)
        mean_cos = m[1 : self.modes + 1]
        # ∂g/∂r_j = scale w_j cos(jθ) / base.
        q = m if inverse_base is None else self._cosine_moments(p * inverse_base)
        column = scale * self.weight
        second = (q[self.sum_index] + q[self.diff_index]) / 2
        jac = (second - np.outer(mean_cos, q[1 : self.modes + 1])) * column[None, :]
        return mean_cos, np.where(np.abs(jac) > 1e-250, jac, 0.0)


def _solve_branch(problem: _Problem, r: np.ndarray, tol: float = 1e-12):
    """Damped Newton on F(r) = r - T(r) from r; returns (r, converged)."""
    for _ in range(60):
        value, jac = problem.moments(r)
        if value is None:
            return r, False
        residual = r - value
        norm = np.max(np.abs(residual))
        if norm < tol:
            return value, True
        try:
            step = np.linalg.solve(np.eye(len(r)) - jac, residual)
        except np.linalg.LinAlgError:
            return r, False
        size = 1.0
        while size > 1e-3:
            trial = r - size * step
            if np.all(np.abs(trial) <= 1):
                new_value, _ = problem.moments(trial)
                if new_value is not None and np.max(np.abs(trial - new_value)) < norm:
                    break
            size /= 2
        else:
            return r, False
        r = trial
    return r, False


def _is_stable(problem: _Problem, r: np.ndarray) -> bool:
    """det(I - T'(r)) > 0: an even number of real eigenvalues of the fixed-point map's
    Jacobian above 1 — none on the branch continued from large κ, one on the unstable branch
    beyond a fold (for USA T' is similar to a symmetric positive matrix)."""
    _, jac = problem.moments(r)
    sign, _ = np.linalg.slogdet(np.eye(len(r)) - jac)
    return bool(sign > 0)


def _width_guess(beta: float, kappa: float, model: str) -> float:
    """Variance σ² of a Gaussian-like one-cluster state: the fixed point of σ² = 1/(curvature
    of κΦ at the peak of ρ with r_k = e^{-k²σ²/2}), from a few iterations."""
    k = np.arange(1, 513, dtype=float)
    log_w = _log_kernel_coefficients(beta, 512)
    if model == "SA":
        log_w = log_w - log_normalized_bessel(0.0, beta)
    w = np.exp(log_w)
    variance = 1.0
    for _ in range(30):
        r = np.exp(-(k**2) * variance / 2)
        curvature = kappa * np.sum(2 * k**2 * w * r)
        if model == "SA":
            curvature /= 1 + beta * np.sum(2 * w * r)
        variance = max(1.0 / max(curvature, 1e-300), 1e-8)
    return variance


def _modes_for(variance: float) -> int:
    modes = 16
    while modes < 12 / np.sqrt(variance) and modes < 2048:
        modes *= 2
    return modes


def _trim(r: np.ndarray) -> np.ndarray:
    """Drop trailing modes below 1e-15 (keeping a power of two >= 16 and a margin)."""
    significant = np.nonzero(np.abs(r) > 1e-15)[0]
    need = 16
    top = significant[-1] + 1 if significant.size else 0
    while need < 1.5 * top:
        need *= 2
    if need >= len(r):
        return r
    return r[:need]


def stationary_order_parameter(
    *,
    beta: float,
    kappa: Numbers,
    d: int = 2,
    model: str,
    branch: str = "clustered",
) -> np.ndarray | float:
    """|∫ e^{iθ} ρ| of the stable stationary density of the noisy mean-field equation on the
    circle, ρ ∝ exp(κ Φ[ρ]) (module docstring), for each κ in `kappa` (vectorised, float64).

    The one-cluster branch is followed by Newton continuation from large κ (where it is a
    narrow bump) down to each requested κ, on the branch symmetric about θ = 0 with cosine
    moments r_1..r_K (K adapted to the width of the bump); a solution is kept when the fixed
    point map r ↦ T(r) has spectral radius < 1 there (for USA this is exactly linear stability
    within the symmetric class: the free energy is κ^{-1}∫ρ log ρ - ½∬ β^{-1} e^{β cos} ρρ).
    Where the branch ends (a fold or the pitchfork at `noise_threshold`) the value is 0.

    `branch`: "clustered" (default) returns the one-cluster state wherever it exists and is
    stable, so it is > 0 in a bistable window below `noise_threshold` when the transition is
    discontinuous (USA on the circle for I_2(β)/I_1(β) > 1/2, i.e. β ≳ 2.45); "uniform"
    returns 0 below `noise_threshold` (the state reached from near-uniform data) and the
    clustered value above it.

    β = 0 is the noisy Kuramoto model: r = I_1(κ r)/I_0(κ r), with r > 0 iff κ > 2.
    """
    check_model(model)
    d = check_count(d, "d", 2)
    if d != 2:
        raise ValueError(
            f"`stationary_order_parameter` is implemented on the circle only: `d` must be 2, "
            f"got {d}. (`noise_threshold` covers every d.)"
        )
    if branch not in _BRANCHES:
        raise ValueError(f"`branch` must be one of {_BRANCHES}, got {branch!r}.")
    beta_array = check_beta_numpy(beta)
    if beta_array.ndim != 0:
        raise ValueError(f"`beta` must be a scalar (κ is the vectorised argument), got {beta!r}.")
    beta = float(beta_array)
    if model == "USA" and beta > 700:
        raise ValueError(
            f"`beta` must be <= 700 for model='USA' (e^β overflows float64 beyond ~709), "
            f"got {beta}."
        )
    kappa = np.asarray(kappa, dtype=float)
    if not np.all(np.isfinite(kappa)) or np.any(kappa <= 0):
        raise ValueError(f"`kappa` must be finite and > 0 (inverse noise), got {kappa!r}.")
    threshold = noise_threshold(beta=beta, d=2, model=model)
    flat = kappa.reshape(-1)
    out = np.zeros_like(flat)
    if branch == "uniform":  # below κ_c the uniform state is stable: 0 without a solve
        above = flat > threshold
        if np.any(above):
            out[above] = stationary_order_parameter(beta=beta, kappa=flat[above], model=model)
        return as_output(out.reshape(kappa.shape))
    order = np.argsort(-flat)
    # Continuation from above the largest κ (and the threshold) down through every requested
    # κ, with the ratio of consecutive κ shrunk where Newton fails; the branch ends (a fold or
    # the pitchfork) when it fails at a ratio below 1.001 or r_1 falls to ~0.
    current = max(float(flat.max()), 2 * threshold)
    variance = _width_guess(beta, current, model)
    modes = _modes_for(variance)
    r = np.exp(-(np.arange(1, modes + 1) ** 2) * variance / 2)
    problem = _Problem(beta, current, model, modes)
    r, ok = _solve_branch(problem, r)
    alive = ok and r[0] > 1e-6
    for index in order:
        target = flat[index]
        ratio = 1.2
        while alive and current > target:
            trial_kappa = max(current / ratio, target)
            problem = _Problem(beta, trial_kappa, model, len(r))
            trial, ok = _solve_branch(problem, r)
            if ok and trial[0] > 1e-6:
                current, r = trial_kappa, _trim(trial)
            elif ratio > 1.001:
                ratio = 1 + (ratio - 1) / 4
            else:
                alive = False
        if not alive:
            break
        if not _is_stable(_Problem(beta, current, model, len(r)), r):
            break
        out[index] = abs(r[0])
    return as_output(out.reshape(kappa.shape))

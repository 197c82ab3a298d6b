"""The selectivity threshold of one attention query (Bruno, Chen, Lin, Polyanskiy, Rigollet,
arXiv:2605.08505): the Poisson limit of the largest attention weight (derived in docs/atlas.md).

A fixed query x and n i.i.d. uniform keys y_j on S^{d−1}; weights w_j ∝ e^{β<x, y_j>}. With
t_j = 1 − <x, y_j>, the density of t near 0 is κ_d (2t)^α (α = (d−3)/2,
κ_d = Γ(d/2)/(√π Γ((d−1)/2))), so at β = c·n^{2/(d−1)} the rescaled gaps s_j = n^{2/(d−1)} t_j
form, as n → ∞, a Poisson process of intensity μ(s) = A s^α, A = κ_d 2^α (A = ½ on S²). The
largest weight is M = 1/(1 + Σ_{k≠1} e^{−c(s_k − s_1)}) (s_1 the smallest gap), and by the Mecke
formula and the Laplace functional (1/(1+S) = ∫_0^∞ e^{−u(1+S)} du)

  E[M] = ∫_0^∞ μ(x) e^{−Λ(x)} ∫_0^∞ e^{−u} exp(−G(x, u)) du dx,   Λ(x) = A x^{α+1}/(α+1),
  G(x, u) = A ∫_0^∞ (x + y)^α (1 − exp(−u e^{−c y})) dy.

On S² (α = 0) G = Ein(u)/(2c) does not depend on x, and E[M] = ∫_0^∞ e^{−u} e^{−Ein(u)/(2c)} du
with Ein(u) = ∫_0^u (1 − e^{−v})/v dv = E₁(u) + ln u + γ_E.

numpy/scipy, float64.
"""

import math

import numpy as np
from scipy import integrate, special

from ._checks import as_output, check_count


def _ein(u: float) -> float:
    """Ein(u) = ∫_0^u (1 − e^{−v})/v dv (series below 1: E₁ + ln u + γ loses digits there)."""
    if u < 1.0:
        terms = [(-1) ** (k + 1) * u**k / (k * math.factorial(k)) for k in range(1, 25)]
        return math.fsum(terms)
    return special.exp1(u) + math.log(u) + np.euler_gamma


def poisson_intensity(d: int) -> tuple[float, float]:
    """(A, α): the limiting intensity μ(s) = A s^α of the rescaled gaps n^{2/(d−1)}(1 − cos)."""
    d = check_count(d, "d", 2)
    alpha = (d - 3) / 2
    kappa = math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2)) / math.sqrt(math.pi)
    return kappa * 2**alpha, alpha


_OPTS = {"epsabs": 1e-11, "epsrel": 1e-10, "limit": 200}


def _limit_one(c: float, d: int) -> float:
    if d == 3:
        value, _ = integrate.quad(lambda u: math.exp(-u - _ein(u) / (2 * c)), 0, np.inf, **_OPTS)
        return value
    return _limit_general(c, d)


def _limit_general(c: float, d: int) -> float:
    """The triple integral of the module doc, for any d (d = 3 checks it against Ein)."""
    A, alpha = poisson_intensity(d)
    opts = _OPTS

    def G(x, u):
        # y = v/c: A c^{-1-α} ∫ (c x + v)^α (1 − exp(−u e^{−v})) dv.
        f = lambda v: (c * x + v) ** alpha * -math.expm1(-u * math.exp(-v))  # noqa: E731
        head, _ = integrate.quad(f, 0, max(1.0, math.log(max(u, 1.0)) + 1), **opts)
        tail, _ = integrate.quad(f, max(1.0, math.log(max(u, 1.0)) + 1), np.inf, **opts)
        return A * c ** (-1 - alpha) * (head + tail)

    # x = x(z) with Λ(x) = z (the smallest gap's law is Exp(1) in z).
    def inner(z):
        x = ((alpha + 1) * z / A) ** (1 / (alpha + 1))
        value, _ = integrate.quad(lambda u: math.exp(-u - G(x, u)), 0, np.inf, epsabs=1e-9)
        return math.exp(-z) * value

    value, _ = integrate.quad(inner, 0, np.inf, epsabs=1e-8, epsrel=1e-8)
    return value


def selectivity_limit(c, d: int = 3):
    """n → ∞ limit of the mean largest attention weight E[max_j w_j] for a fixed query and n
    i.i.d. uniform keys on S^{d−1} at β = c·n^{2/(d−1)} (the critical scaling; the mean tends
    to 0 for smaller exponents and to 1 for larger ones). See the module doc for the formula;
    d = 3 is one quadrature (≈ 0.72949 at c = 1), other d a double one (slower, ~1e-7).

    **Arguments:** `c` > 0 (number or array), `d` >= 2 the ambient dimension."""
    d = check_count(d, "d", 2)
    cs = np.asarray(c, dtype=float)
    if not np.all(np.isfinite(cs)) or np.any(cs <= 0):
        raise ValueError(f"`c` must be finite and > 0 (β = c·n^(2/(d−1))), got {c!r}.")
    values = np.vectorize(lambda ci: _limit_one(float(ci), d), otypes=[float])(cs)
    return as_output(values)


def _draw_t(rng, d: int, shape, upper: float = 2.0) -> np.ndarray:
    """t = 1 − <x, y> for uniform y on S^{d−1}, conditioned on t < upper: t/2 ~ Beta(a, a)."""
    if d == 3:
        return upper * rng.random(shape)
    a = (d - 1) / 2
    if upper >= 2.0:
        return 2 * rng.beta(a, a, size=shape)
    return 2 * special.betaincinv(a, a, rng.random(shape) * special.betainc(a, a, upper / 2))


def sample_largest_weight(
    n: int,
    beta: float,
    trials: int,
    *,
    d: int = 3,
    seed: int = 0,
    cutoff: float | None = 60.0,
    block: int = 1 << 22,
) -> np.ndarray:
    """`trials` draws of max_j w_j for a fixed query and n i.i.d. uniform keys on S^{d−1}.

        Exact in law without drawing vectors: only t_j = 1 − <x, y_j> enters, and t/2 ~
        Beta((d−1)/2, (d−1)/2) (uniform on [0, 2] on S², Archimedes). log max_j w_j =
        −log Σ_j e^{−β(t_j − t_min)} in float64.

        `cutoff=None`: every key is drawn, streamed in blocks of at most `block` numbers (memory
        O(block) for any n). `cutoff=L` (default 60): only the keys with β t < L are drawn (their
        number is Binomial(n, P(t < τ)), τ = max(L/β, the level with 30 keys below it on average),
    given it they are i.i.d. on [0, τ)); the others change
        Σ_j e^{−β(t_j − t_min)} ≥ 1 by at most n e^{−β(τ − t_min)}, and a trial where that bound
        exceeds 1e-12 is redrawn in full. Same law to 1e-12, far fewer numbers at large β (used when
    P(t < τ) < 0.05; otherwise every key is drawn).

        **Returns:** float64 array of shape (trials,)."""
    n = check_count(n, "n", 1)
    trials = check_count(trials, "trials", 1)
    d = check_count(d, "d", 2)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"`beta` must be finite and >= 0, got {beta!r}.")
    if cutoff is not None and not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"`cutoff` must be None or a positive number (e.g. 60), got {cutoff!r}.")
    rng = np.random.default_rng(seed)
    out = np.empty(trials)
    a = (d - 1) / 2
    upper = 2.0
    if cutoff is not None and beta > 0:
        # At least ~30 keys drawn on average, so a trial rarely has none below `upper`.
        enough = 2 * special.betaincinv(a, a, min(1.0, 30 / n))
        upper = min(2.0, max(cutoff / beta, enough))
    p = upper / 2 if d == 3 else special.betainc(a, a, upper / 2)
    if p < 0.05:  # else drawing every key (fast generators) beats the inverse CDF
        counts = rng.binomial(n, p, size=trials)
        for i, k in enumerate(counts):
            t = _draw_t(rng, d, (k,), upper)
            if k == 0 or math.log(n) - beta * (upper - t.min()) > math.log(1e-12):
                out[i] = _stream(rng, n, beta, 1, d, block)[0]
                continue
            out[i] = math.exp(-special.logsumexp(-beta * (t - t.min())))
        return out
    return _stream(rng, n, beta, trials, d, block)


def _stream(rng, n: int, beta: float, trials: int, d: int, block: int) -> np.ndarray:
    out = np.empty(trials)
    rows = max(1, min(trials, block // n))  # trials per pass when a whole row fits a block
    cols = min(n, block)
    for start in range(0, trials, rows):
        r = min(rows, trials - start)
        t_min = np.full(r, np.inf)
        lse = np.full(r, -np.inf)  # log Σ e^{−β t} so far
        for done in range(0, n, cols):
            t = _draw_t(rng, d, (r, min(cols, n - done)))
            t_min = np.minimum(t_min, t.min(axis=1))
            lse = np.logaddexp(lse, special.logsumexp(-beta * t, axis=1))
        out[start : start + r] = np.exp(-beta * t_min - lse)
    return out

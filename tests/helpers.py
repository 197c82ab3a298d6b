"""Shared references for the tests: independent NumPy/SciPy restatements of the models."""

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp


def equiangular_reference(ts, n, beta, model):
    """γ_β(t) from (6.9) (SA) or (6.10) (USA), float64 scipy DOP853."""

    def rhs(t, g):
        growth = (1 - g) * ((n - 1) * g + 1)
        if model == "SA":
            return 2 * growth / (np.exp(beta * (1 - g)) + n - 1)
        return (2 / n) * np.exp(beta * g) * growth

    sol = solve_ivp(rhs, (ts[0], ts[-1]), [0.0], t_eval=ts, method="DOP853",
                    rtol=1e-13, atol=1e-15)
    return sol.y[0]


def off_diagonal(gram):
    n = gram.shape[-1]
    return gram[..., ~np.eye(n, dtype=bool)]


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# Every shipped config; the sweep and theory ones, and the fits (configs/fit_*.yaml).
CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
SWEEP_CONFIGS = [path for path in CONFIGS if not path.name.startswith("fit_")]
FIT_CONFIGS = [path for path in CONFIGS if path.name.startswith("fit_")]

"""The config schema of `mean_field` runs: the n → ∞ equation on the circle
(`solve_mean_field`, docs/models.md) swept over β and the inverse noise κ."""

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ._schema_core import (
    _DISTINCT,
    Grid,
    PositiveInteger,
    PositiveNumber,
    _Experiment,
    _integer_type,
    _listed,
    _number_type,
    _Section,
    _unique,
)
from ._schema_simulation import TimeConfig

# The solvers of `solve_mean_field` a config names: explicit (transport-dominated runs) or
# IMEX (the diffusion κ^{-1}∂²_θ implicit: strong noise, many modes, long horizons).
MEAN_FIELD_SOLVERS = {
    "tsit5": "explicit Runge–Kutta 5(4); its step is limited to about 3κ/M² by the diffusion",
    "dopri5": "explicit Runge–Kutta 5(4) (Dormand–Prince); limited like tsit5",
    "kencarp3": "IMEX (diffusion implicit) order 3",
    "kencarp4": "IMEX (diffusion implicit) order 4: the stiff path",
    "kencarp5": "IMEX (diffusion implicit) order 5",
}
IMEX_SOLVERS = ("kencarp3", "kencarp4", "kencarp5")
# Observables of a mean-field solve, saved per β, κ and save time (with `resolution`, always).
MEAN_FIELD_OBSERVABLES = {
    "order_parameter": "r(t) = |∫ e^{iθ} ρ(θ, t) dθ| = 2π|c_1|",
    "density": "ρ(θ, t) on the grid θ_j = 2πj/(2M)",
}
RESOLUTION = "fraction of the L² norm of ρ in the top quarter of the Fourier modes"
# An explicit solver's steps are limited by the stiffest diffusion mode, λ = (M − 1)²/κ: the
# PID controller settles at the stability boundary (|h λ| ≈ 3.5 for Tsit5's accepted steps)
# and rejects steps about it, so a solve to t1 takes about t1·λ/2.8 steps in all (measured
# 2.76–3.04 for M = 8..32, κ = 0.5..4, SA and USA). A run whose t1·λ/3.2 exceeds max_steps
# cannot finish and is refused before it starts (the USA, κ = 1.8, M = 32, t = 600:
# 100 104 > 100 000; it takes ~116 000).
_EXPLICIT_STABILITY = 3.2


class MeanFieldModelConfig(_Section):
    """The equation: the model, its Fourier resolution and the initial density."""

    model: Literal["SA", "USA"] = Field(
        "SA", description="SA (softmax, the paper's (6.9)) or USA (unnormalised, (6.10))"
    )
    modes: _integer_type(ge=4, le=4096) = Field(
        32,
        description="the largest Fourier mode M kept (>= 4; the grid has 2M points); every β "
        "must be <= M",
    )
    concentration: _number_type(ge=0, le=500) = Field(
        1.0,
        description="initial density ρ0(θ) ∝ exp(c cos(kθ)), a von Mises density of "
        "concentration c (0: uniform, which is stationary)",
    )
    mode: PositiveInteger = Field(
        1, description="the harmonic k of the initial density (k clusters); k < modes"
    )

    @model_validator(mode="after")
    def _resolved(self):
        if self.mode >= self.modes:
            raise ValueError(
                f"mode: got {self.mode}, which the {self.modes} Fourier modes do not hold. "
                f"Fix: a mode below modes={self.modes}, or raise modes"
            )
        return self


class MeanFieldSweepConfig(_Section):
    """The axes of the sweep: β and κ, every pair solved once (deterministic, no starts)."""

    beta: Annotated[Grid, _DISTINCT] = Field(
        description="inverse temperatures β (each in [0, modes]): a number, a list or "
        "{start, stop, num}"
    )
    kappa: Annotated[Grid, _DISTINCT] | None = Field(
        None,
        description="inverse noise strengths κ > 0 (diffusion κ^{-1}∂²_θ; the particles' "
        "noise sqrt(2/κ) dW): a number, a list or {start, stop, num}; null: the noiseless "
        "equation (one κ coordinate, inf)",
    )

    @field_validator("beta")
    @classmethod
    def _nonnegative(cls, beta):
        if min(beta) < 0:
            raise ValueError(f"every beta must be >= 0 (the solver's range [0, modes]), got {beta}")
        return _unique(beta)

    @field_validator("kappa")
    @classmethod
    def _positive(cls, kappa):
        if kappa is not None and min(kappa) <= 0:
            raise ValueError(f"every kappa must be > 0 (null: no noise), got {kappa}")
        return kappa if kappa is None else _unique(kappa)

    @property
    def kappas(self) -> list[float]:
        """The κ coordinate: the grid, or [inf] for the noiseless equation."""
        return [math.inf] if self.kappa is None else list(self.kappa)


class MeanFieldSolverConfig(_Section):
    """How `solve_mean_field` integrates: a named diffrax solver with a PID controller."""

    name: Literal[tuple(MEAN_FIELD_SOLVERS)] = Field(
        "tsit5",
        description="tsit5 or dopri5 (explicit) or kencarp3/4/5 (IMEX: the diffusion "
        "implicit; the stiff path for strong noise and many modes)",
    )
    rtol: PositiveNumber = Field(1e-7, description="relative tolerance of the PID controller")
    atol: PositiveNumber = Field(1e-9, description="absolute tolerance of the PID controller")
    max_steps: _integer_type(ge=1, le=10_000_000) = Field(
        100_000,
        description="most solver steps per solve; a solve that needs more fails (masked, "
        "counted in failed_solves)",
    )
    allow_failures: bool = Field(
        False, description="finish with exit status 0 although some solves failed (masked)"
    )

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def implicit(self) -> bool:
        return self.name in IMEX_SOLVERS

    def describe(self) -> str:
        return f"{self.name} PID, rtol={self.rtol:g}, atol={self.atol:g}"


class MeanFieldObservablesConfig(_Section):
    """What is saved per β, κ and save time."""

    names: Annotated[
        _listed(Literal[tuple(MEAN_FIELD_OBSERVABLES)]), Field(max_length=2), _DISTINCT
    ] = Field(
        ["order_parameter"],
        description="order_parameter (r(t)) and density (ρ on the grid): one name or a list; "
        "resolution is always saved",
    )
    stationary_from: _number_type(ge=0, le=1) = Field(
        0.5,
        description="the stationary r of a solve is the mean of r(t) over t >= "
        "stationary_from × t1 (1: the last save only), set beside "
        "theory.stationary_order_parameter",
    )
    resolution_limit: _number_type(gt=0, le=1) = Field(
        1e-6,
        description="a save whose resolution (the L² fraction in the top quarter of the modes) "
        "exceeds this is under-resolved: a solve with one in the stationary tail has no "
        "stationary r (NaN, counted in unresolved_solves); raise mean_field.modes",
    )

    @field_validator("names")
    @classmethod
    def _distinct(cls, names):
        if "order_parameter" not in names:
            raise ValueError(
                f"must include order_parameter (summaries and figures read it), got {names}"
            )
        return _unique(names)


class MeanFieldConfig(_Experiment):
    """The mean-field equation on the circle solved for every (β, κ) of a grid."""

    experiment: Literal["mean_field"]
    mean_field: MeanFieldModelConfig = Field(
        MeanFieldModelConfig(), description="the equation: model, Fourier modes, initial density"
    )
    sweep: MeanFieldSweepConfig = Field(description="the axes of the sweep: β and κ")
    time: TimeConfig = Field(description="save times linspace(0, t1, num)")
    solver: MeanFieldSolverConfig = Field(
        MeanFieldSolverConfig(), description="how the equation is integrated"
    )
    observables: MeanFieldObservablesConfig = Field(
        MeanFieldObservablesConfig(), description="what is saved at every save time"
    )

    @model_validator(mode="after")
    def _solvable(self):
        modes = self.mean_field.modes
        large = [beta for beta in self.sweep.beta if beta > modes]
        if large:
            raise ValueError(
                f"sweep.beta: {large} exceed mean_field.modes = {modes} (the kernel e^(β cos) "
                f"needs about sqrt(2β) modes per cluster and more to resolve it). Fix: raise "
                f"mean_field.modes to at least {math.ceil(max(large))}, or lower β"
            )
        if not self.solver.implicit and self.sweep.kappa is not None:
            kappa = min(self.sweep.kappa)
            needed = self.time.t1 * (modes - 1) ** 2 / (_EXPLICIT_STABILITY * kappa)
            if needed > self.solver.max_steps:
                raise ValueError(
                    f"solver.name: {self.solver.name!r} is explicit, and the diffusion at "
                    f"κ = {kappa:g} with M = {modes} modes (stiffness (M−1)²/κ = "
                    f"{(modes - 1) ** 2 / kappa:.4g}) limits its step to about "
                    f"{_EXPLICIT_STABILITY * kappa / (modes - 1) ** 2:.3g}, so t1 = "
                    f"{self.time.t1:g} needs more than {needed:.3g} steps, over "
                    f"solver.max_steps = {self.solver.max_steps}. Fix: solver.name=kencarp4 "
                    "(the diffusion implicit), or raise solver.max_steps"
                )
        return self

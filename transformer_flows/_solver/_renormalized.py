"""Wrap any diffrax solver so that the state is returned to the sphere after every step."""

import diffrax
from jaxtyping import PyTree

from .._sphere import normalize


def retract_state(y: PyTree) -> PyTree:
    """Normalise the particle state. Under `diffrax.BacksolveAdjoint` the backward solve
    carries the augmented state (y, a_y, a_args, a_terms): only y lives on the sphere."""
    if isinstance(y, tuple):
        return (normalize(y[0]), *y[1:])
    return normalize(y)


class Renormalized(diffrax.AbstractWrappedSolver):
    """`solver`, followed by radial projection of the new state onto the sphere.

    The wrapped solver's error estimate drives the step-size controller unchanged, so an
    adaptive solver keeps its order and PID control; only accepted states are kept, so the
    drift ‖x_i‖ - 1 stays at the level of one step's rounding instead of accumulating.
    `isinstance` checks (adaptive, implicit, ...) forward to the wrapped solver.
    """

    solver: diffrax.AbstractSolver

    def __check_init__(self):
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise ValueError(
                f"`solver` must be a diffrax solver such as diffrax.Tsit5(), got {self.solver!r}."
            )

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def scan_kind(self):
        # diffrax's DirectAdjoint/ForwardMode read this (isinstance forwards to the inner
        # Runge–Kutta solver); `solve` sets the inner value before they look.
        return getattr(self.solver, "scan_kind", None)

    @property
    def root_finder(self):
        # Implicit solvers (Kvaerno3/4/5, ImplicitEuler): `diffeqsolve` reads the root
        # finder of the solver it is given and, under an adaptive controller, fills in its
        # tolerances with `eqx.tree_at(lambda s: s.root_finder.rtol, ...)`. Through this
        # property that edit lands on the wrapped solver, which is the one that steps.
        # Explicit solvers have none: this then raises AttributeError, as for them.
        return self.solver.root_finder  # pyright: ignore[reportAttributeAccessIssue]

    @property
    def root_find_max_steps(self):
        return self.solver.root_find_max_steps  # pyright: ignore[reportAttributeAccessIssue]

    @property
    def term_compatible_contr_kwargs(self):
        # SDE solvers that need Lévy areas (SPaRK, GeneralShARK) ask the Brownian path for
        # them through these keyword arguments (`use_levy=True`).
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return retract_state(y1), y_error, dense_info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

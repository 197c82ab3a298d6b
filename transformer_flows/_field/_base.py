"""Abstract vector fields: on the product of spheres (points) and on the torus (angles)."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PyTree

from .._custom_types import Angles, Particles
from .._sphere import normalize, project_tangent


class AbstractSphereField(eqx.Module):
    """A vector field on (S^{d-1})^n: `field(t, x, args)` maps (n, d) points to tangent
    velocities. Concrete fields supply `drift`, the term before tangent projection, which
    the authors' discrete layer update (`NormalizedEuler`) needs.
    """

    @abc.abstractmethod
    def drift(self, t, x: Particles, args: PyTree) -> Particles:
        """The interaction term a(x) before projection; the velocity is P^⊥_x a(x)."""

    @abc.abstractmethod
    def jump_times(self) -> Float[Array, " jumps"] | None:
        """Times where the field is discontinuous in t (layer boundaries), or None."""

    @abc.abstractmethod
    def check_state(self, x) -> None:
        """Raise ValueError at trace time if `x` does not have a shape this field accepts."""

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        return project_tangent(x, self.drift(t, x, args))

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        """The discrete layer of step `h` whose h → 0 limit is this field; `ResidualLayers`
        steps it. Default: the Post-LN layer x ← LN(x + h·drift(x)), i.e. `NormalizedEuler`."""
        return normalize(x + h * self.drift(t, x, args))


class AbstractEuclideanField(eqx.Module):
    """A vector field on (R^d)^n: tokens that are not kept on the sphere (Pre-LN, Peri-LN,
    no normalisation). `field(t, x, args)` maps (n, d) states to (n, d) velocities; `solve`
    integrates them without renormalisation and saves the states as they are.
    """

    @abc.abstractmethod
    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        """Velocities of the tokens."""

    @abc.abstractmethod
    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        """The discrete residual layer of step `h` (what `ResidualLayers` steps)."""

    @abc.abstractmethod
    def jump_times(self) -> Float[Array, " jumps"] | None:
        """Times where the field is discontinuous in t (layer boundaries), or None."""

    @abc.abstractmethod
    def check_state(self, x) -> None:
        """Raise ValueError at trace time if `x` does not have a shape this field accepts."""


class AbstractAngleField(eqx.Module):
    """A vector field on the torus T^n: `field(t, theta, args)` maps (n,) angles to (n,)."""

    @abc.abstractmethod
    def __call__(self, t, theta: Angles, args: PyTree = None) -> Angles:
        """Angular velocities."""

    @abc.abstractmethod
    def check_state(self, theta) -> None:
        """Raise ValueError at trace time if `theta` does not have a shape this field accepts."""


def check_points(x, field_name: str) -> None:
    """Shape check shared by sphere fields: a configuration is (n, d) with d >= 2."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"`x0` for {field_name} must be points of shape (n, d), got shape {shape}. "
            "Angles on the circle go to `Kuramoto`; convert them with "
            "`transformer_flows.angles_to_points(theta)` to use a sphere field."
        )
    if shape[1] < 2:
        raise ValueError(f"`x0` must have dimension d >= 2, got shape {shape}.")
    if shape[0] < 1:
        raise ValueError(
            f"`x0` has no tokens (shape {shape}); pass at least one token, e.g. "
            "`transformer_flows.sample_sphere(key, n, d)` with n >= 1."
        )

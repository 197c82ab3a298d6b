"""The dynamical mean-field theory (DMFT) of the toy gated-attention network of Bordelon,
Chaudhry and Pehlevan (arXiv:2405.15712, their notebook `simple_gating_NN.ipynb`), written from
the network's equations, and the finite-N network it describes (trained by SGD in μP).

The network (docs/limits_training.md has the derivation). G gates, N neurons per gate, inputs
x_μ ∈ R^D, μ = 1..P. Per gate g and neuron n: a key scalar k_n, a query vector q_n ∈ R^D, a value
vector v_n ∈ R^D and a read-out w_n, all O(1). With a_nμ = q_n·x_μ/√D and v_nμ = v_n·x_μ/√D,

    A_gμ = (1/N) Σ_n k_n a_nμ               (the gate's attention variable, α_A = 1)
    f_μ  = (1/(γN)) Σ_g e^{A_gμ} Σ_n w_n v_nμ
    loss = (1/P) Σ_μ (f_μ − f_μ(θ₀) − y_μ)²  (centred output)

trained by SGD with learning rate η·N·γ²/2. Every update of a neuron's variables is linear in
that neuron's own variables with coefficients that are averages over the neurons, so the
per-gate second moments

    F_μ = ⟨w v_μ⟩, Z = ⟨w²⟩, V_μν = ⟨v_μ v_ν⟩, A_μ = ⟨k a_μ⟩, K = ⟨k²⟩, Q_μν = ⟨a_μ a_ν⟩

obey a closed recursion (`gating_dmft`). It is exact at every N when started from the network's
empirical moments (`gating_moments`); N → ∞ only fixes the initial moments to their expectations
(F = 0, Z = 1, V = Cx, A = ρ u·x/√D, K = 1, Q = ρ²(u·x)(u·x)ᵀ/D + (1 − ρ²)Cx), which is the DMFT.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


class GatingProblem(eqx.Module):
    """The toy task and its training settings: inputs `x` (D, P), targets `y` (P,), the gates'
    warm-start alignments `rho` (G,) and directions `u` (G, D), learning rate `eta` and
    feature-learning strength `gamma`."""

    x: Float[Array, "D P"]
    # y and u have their own axis names so that __check_init__ names the mismatch.
    y: Float[Array, " Py"]
    rho: Float[Array, " G"]
    u: Float[Array, "Gu Du"]
    eta: float
    gamma: float

    def __check_init__(self):
        if self.x.shape[1] != self.y.shape[0]:
            raise ValueError(
                f"`x` has {self.x.shape[1]} points (shape {self.x.shape}) but `y` has "
                f"{self.y.shape[0]}; give one target per column of `x`."
            )
        if self.u.shape != (self.rho.shape[0], self.x.shape[0]):
            raise ValueError(
                f"`u` has shape {self.u.shape}; it must be (gates, D) = "
                f"{(self.rho.shape[0], self.x.shape[0])}."
            )
        if not np.all(np.abs(np.asarray(self.rho)) <= 1.0):
            raise ValueError(f"`rho` = {self.rho} must lie in [-1, 1] (they are correlations).")
        if not (self.eta > 0 and self.gamma > 0):
            raise ValueError(
                f"`eta` = {self.eta} and `gamma` = {self.gamma} must both be positive."
            )

    @property
    def gram(self) -> Float[Array, "P P"]:
        """Cx = xᵀx/D."""
        return self.x.T @ self.x / self.x.shape[0]


def xor_gating_problem(
    *, gates: int = 6, eta: float = 0.002, gamma: float = 2.5, dtype=jnp.float64
) -> GatingProblem:
    """The authors' setting: XOR on the four corners of [−1, 1]², warm start
    ρ = linspace(−0.9, 0.9, gates), u = normal(PRNGKey(3), (gates, 2)) in float32 with jax's
    pre-0.5 random stream (their notebook's draw: the DMFT then reproduces the notebook's printed
    ΔA to 5 digits)."""
    if gates < 1:
        raise ValueError(f"`gates` = {gates} must be a positive integer.")
    x = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]], dtype=dtype).T
    y = jnp.array([1.0, -1.0, 1.0, -1.0], dtype=dtype)
    rho = jnp.linspace(-0.9, 0.9, gates, dtype=dtype)
    # The notebook drew u with jax's pre-0.5 random stream (threefry not partitionable).
    with jax.threefry_partitionable(False):
        u = jax.random.normal(jax.random.PRNGKey(3), (gates, 2), dtype=jnp.float32)
    u = jnp.asarray(u, dtype=dtype)
    return GatingProblem(x, y, rho, u, eta, gamma)


class GatingMoments(eqx.Module):
    """Per-gate second moments (see the module docstring) and the initial output f0 (P,) that
    the centred output subtracts (0 at N = ∞)."""

    F: Float[Array, "G P"]
    Z: Float[Array, " G"]
    V: Float[Array, "G P P"]
    A: Float[Array, "G P"]
    K: Float[Array, " G"]
    Q: Float[Array, "G P P"]
    f0: Float[Array, " P"]


def dmft_initial_moments(problem: GatingProblem) -> GatingMoments:
    """The N → ∞ initial moments (the expectations over the initial weights)."""
    g = problem.rho.shape[0]
    cx = problem.gram
    ux = problem.u @ problem.x / jnp.sqrt(problem.x.shape[0])  # (G, P)
    rho = problem.rho
    return GatingMoments(
        F=jnp.zeros_like(ux),
        Z=jnp.ones(g, ux.dtype),
        V=jnp.broadcast_to(cx, (g, *cx.shape)),
        A=rho[:, None] * ux,
        K=jnp.ones(g, ux.dtype),
        Q=(rho**2)[:, None, None] * ux[:, :, None] * ux[:, None, :]
        + (1 - rho**2)[:, None, None] * cx[None],
        f0=jnp.zeros_like(problem.y),
    )


def _output(problem: GatingProblem, m: GatingMoments) -> Float[Array, " P"]:
    return jnp.sum(jnp.exp(m.A) * m.F, axis=0) / problem.gamma


def _dmft_step(problem: GatingProblem, m: GatingMoments, second_order: bool):
    c = problem.eta * problem.gamma / problem.y.shape[0]
    c2 = c * c if second_order else 0.0
    cx = problem.gram
    phi = jnp.exp(m.A)  # φ = φ' for the exponential gate
    delta = (problem.y - (_output(problem, m) - m.f0))[None, :]
    g = delta * phi  # ∂f/∂(w v) direction, (G, P)
    h = g @ cx
    r = delta * phi * m.F  # ∂f/∂A direction, (G, P)
    s = r @ cx
    gF = jnp.sum(g * m.F, axis=1)
    rA = jnp.sum(r * m.A, axis=1)
    new = GatingMoments(
        F=m.F + c * (m.Z[:, None] * h + jnp.einsum("gmn,gn->gm", m.V, g)) + c2 * h * gF[:, None],
        Z=m.Z + 2 * c * gF + c2 * jnp.einsum("gm,gmn,gn->g", g, m.V, g),
        V=m.V
        + c * (h[:, :, None] * m.F[:, None, :] + m.F[:, :, None] * h[:, None, :])
        + c2 * m.Z[:, None, None] * h[:, :, None] * h[:, None, :],
        A=m.A + c * (m.K[:, None] * s + jnp.einsum("gmn,gn->gm", m.Q, r)) + c2 * s * rA[:, None],
        K=m.K + 2 * c * rA + c2 * jnp.einsum("gm,gmn,gn->g", r, m.Q, r),
        Q=m.Q
        + c * (s[:, :, None] * m.A[:, None, :] + m.A[:, :, None] * s[:, None, :])
        + c2 * m.K[:, None, None] * s[:, :, None] * s[:, None, :],
        f0=m.f0,
    )
    return new, (jnp.mean(delta[0] ** 2), m.A)


def gating_dmft(
    problem: GatingProblem,
    steps: int,
    *,
    initial: GatingMoments | None = None,
    second_order: bool = True,
) -> tuple[Float[Array, " T1"], Float[Array, "T1 G P"]]:
    """Run the moment recursion for `steps` SGD steps; return the loss and the attention
    variables A (G, P) at steps 0, 1, ..., `steps` (step t is after t updates).

    `initial` defaults to the N → ∞ moments (`dmft_initial_moments`): that is the DMFT. Given
    a finite network's empirical moments (`gating_moments`) it reproduces that network's SGD
    exactly. `second_order=False` drops the O(η²) terms (the gradient-flow discretisation used
    in the authors' notebook)."""
    if steps < 0:
        raise ValueError(f"`steps` = {steps} must be >= 0.")
    m0 = dmft_initial_moments(problem) if initial is None else initial
    final, (losses, a) = jax.lax.scan(
        lambda m, _: _dmft_step(problem, m, second_order), m0, None, length=steps
    )
    last_loss = jnp.mean((problem.y - (_output(problem, final) - final.f0)) ** 2)
    return (
        jnp.concatenate([losses, last_loss[None]]),
        jnp.concatenate([a, final.A[None]]),
    )


class GatingNetwork(eqx.Module):
    """The finite-N network's weights, all of shape (G, N) or (G, N, D)."""

    k: Float[Array, "G N"]
    q: Float[Array, "G N D"]
    v: Float[Array, "G N D"]
    w: Float[Array, "G N"]


def init_gating_network(key: PRNGKeyArray, problem: GatingProblem, width: int) -> GatingNetwork:
    """Standard-normal weights with the warm start q_n = ρ k_n u + √(1 − ρ²) z_n (so that
    A_g(0) → ρ_g u_g·x/√D as N → ∞), as in the authors' notebook at α = 1."""
    if width < 1:
        raise ValueError(f"`width` = {width} must be a positive integer.")
    g, d = problem.u.shape
    dtype = problem.x.dtype
    kk, kz, kv, kw = jax.random.split(key, 4)
    k = jax.random.normal(kk, (g, width), dtype)
    rho = problem.rho[:, None, None]
    q = rho * k[:, :, None] * problem.u[:, None, :] + jnp.sqrt(1 - rho**2) * jax.random.normal(
        kz, (g, width, d), dtype
    )
    v = jax.random.normal(kv, (g, width, d), dtype)
    w = jax.random.normal(kw, (g, width), dtype)
    return GatingNetwork(k, q, v, w)


def gating_attention(net: GatingNetwork, problem: GatingProblem) -> Float[Array, "G P"]:
    """A_gμ = (1/N) Σ_n k_n q_n·x_μ/√D."""
    a = net.q @ problem.x / jnp.sqrt(problem.x.shape[0])  # (G, N, P)
    return jnp.mean(net.k[:, :, None] * a, axis=1)


def gating_output(net: GatingNetwork, problem: GatingProblem) -> Float[Array, " P"]:
    """f_μ = (1/(γN)) Σ_g e^{A_gμ} Σ_n w_n v_n·x_μ/√D (not centred)."""
    v = net.v @ problem.x / jnp.sqrt(problem.x.shape[0])  # (G, N, P)
    corr = jnp.mean(net.w[:, :, None] * v, axis=1)  # (G, P)
    return jnp.sum(jnp.exp(gating_attention(net, problem)) * corr, axis=0) / problem.gamma


def gating_moments(net: GatingNetwork, problem: GatingProblem) -> GatingMoments:
    """The empirical second moments of a network (and its output as f0)."""
    sd = jnp.sqrt(problem.x.shape[0])
    v = net.v @ problem.x / sd
    a = net.q @ problem.x / sd
    return GatingMoments(
        F=jnp.mean(net.w[:, :, None] * v, axis=1),
        Z=jnp.mean(net.w**2, axis=1),
        V=jnp.einsum("gnm,gnp->gmp", v, v) / v.shape[1],
        A=jnp.mean(net.k[:, :, None] * a, axis=1),
        K=jnp.mean(net.k**2, axis=1),
        Q=jnp.einsum("gnm,gnp->gmp", a, a) / a.shape[1],
        f0=gating_output(net, problem),
    )


def train_gating_network(
    net: GatingNetwork, problem: GatingProblem, steps: int
) -> tuple[Float[Array, " T1"], GatingNetwork]:
    """SGD on the centred loss (1/P) Σ (f − f(θ₀) − y)² with learning rate η·N·γ²/2 (μP),
    gradients by `jax.grad`; returns the loss at steps 0..`steps` and the final weights."""
    if steps < 0:
        raise ValueError(f"`steps` = {steps} must be >= 0.")
    f0 = gating_output(net, problem)
    lr = 0.5 * problem.eta * net.k.shape[1] * problem.gamma**2

    def loss(p):
        return jnp.mean((gating_output(p, problem) - f0 - problem.y) ** 2)

    def step(p, _):
        value, grad = jax.value_and_grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, grad), value

    final, losses = jax.lax.scan(step, net, None, length=steps)
    return jnp.concatenate([losses, loss(final)[None]]), final

"""Training a random transformer (`random_transformer`) under the parameterisation of Bordelon,
Chaudhry and Pehlevan (arXiv:2405.15712), docs/limits_training.md:

- the read-out f_θ(x) = (1/D) wᵀ Σ_i √D x_i^L / n (μP: 1/fan-in on the RMS-1 stream √D·x), and
  the trained output is centred, F_θ = (f_θ − f_θ₀)/γ₀, so F = 0 exactly at initialisation;
- SGD's learning rate η·N·H·γ₀²·L^{2α_L−1} (`sgd_learning_rate`), Adam's η/√(NH)
  (`adam_learning_rate`);
- the per-parameter factors on that rate (`learning_rate_factors`) that make training our weights
  (all N(0, 1), fixed multipliers) the same dynamics as training the authors' weights, whose
  initial variances and multipliers depend on α_A: their query/key weights are
  W_a ~ N(0, N^{1−2α_A}) behind the multiplier N^{α_A−3/2}/√H (`Attention`, c = 3/2 − α_A, in
  their train_vit_cifar.py), i.e. ours are W = N^{α_A−1} W_a; under Adam the read-out's rate is
  √D times the others (μP for Adam: the 1/D read-out moves by η/D per step);
- full-batch training on fixed inputs that records the token trajectories through depth (the L+1
  layer states of every input) at requested steps.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._transformer import AbstractRandomTransformer


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def sgd_learning_rate(
    eta: float, *, heads: int, head_dim: int, depth: int, gamma0: float, alpha_L: float
) -> float:
    """The μP / depth-μP SGD learning rate η·N·H·γ₀²·L^{2α_L−1}."""
    for value, name in ((eta, "eta"), (gamma0, "gamma0")):
        _check_positive(value, name)
    for value, name in ((heads, "heads"), (head_dim, "head_dim"), (depth, "depth")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return eta * head_dim * heads * gamma0**2 * depth ** (2 * alpha_L - 1)


def adam_learning_rate(eta: float, *, heads: int, head_dim: int) -> float:
    """Adam's learning rate in the parameterisation, η/√(NH)."""
    _check_positive(eta, "eta")
    for value, name in ((heads, "heads"), (head_dim, "head_dim")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return eta / (heads * head_dim) ** 0.5


class ReadoutModel(eqx.Module):
    """A random transformer with a linear read-out `readout` (D,), entries N(0, 1) at
    initialisation: f_θ(x) = wᵀ x̄^L/√D, x̄^L the mean final token."""

    transformer: AbstractRandomTransformer
    readout: Float[Array, " D"]

    def __check_init__(self):
        if self.readout.shape != (self.transformer.weights.dim,):
            raise ValueError(
                f"`readout` has shape {self.readout.shape}; it must be (D,) = "
                f"({self.transformer.weights.dim},), the transformer's d_model."
            )

    def states(self, x0: Float[Array, "n D"]) -> Float[Array, "layers n D"]:
        """The L + 1 layer states of one input (the token trajectory through depth)."""
        return self.transformer.layer_states(x0)

    def raw_output(self, x0: Float[Array, "n D"]) -> Float[Array, ""]:
        final = self.states(x0)[-1]
        dim = self.readout.shape[0]
        return jnp.dot(self.readout, jnp.mean(final, axis=0)) / jnp.sqrt(
            jnp.asarray(dim, final.dtype)
        )


def _check_optimizer(optimizer) -> str:
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {optimizer!r}.")
    return optimizer


def init_readout_model(key: PRNGKeyArray, transformer: AbstractRandomTransformer) -> ReadoutModel:
    """Attach an N(0, 1) read-out vector to `transformer` (μP: multiplier 1/D on the RMS-1
    stream, for SGD and Adam alike; see `learning_rate_factors` for Adam's read-out rate)."""
    dtype = transformer.weights.query.dtype
    return ReadoutModel(
        transformer, jax.random.normal(key, (transformer.weights.dim,), dtype=dtype)
    )


def learning_rate_factors(model: ReadoutModel, optimizer: str = "sgd") -> ReadoutModel:
    """Per-parameter factors on the learning rate (a pytree shaped like `model`'s arrays) under
    which training our weights is training the authors' parameterisation (μP for Adam).

    A weight written as W = s·W_a, trained in W_a, moves W by s² times the SGD step of W
    (ΔW = s·ΔW_a, ∂/∂W_a = s ∂/∂W) and by s times the Adam step (Adam's step is blind to the
    gradient's scale). The authors' query/key weights have s = N^{α_A−1} (their
    `kif_qk` = N^{c−1/2}, multiplier N^{−c}/√H, c = 3/2 − α_A); every other weight has s = 1.
    So the factors are N^{2α_A−2} on the query and key weights for SGD (1/N at α_A = ½: the
    logit updates are then O(1) for both α_A) and N^{α_A−1} for Adam. Under Adam the read-out
    also gets √D: with the base rate η/√D its step would be η/√D per entry, and the 1/D read-out
    needs η (μP for Adam: an O(1) change of f per step). This is their read-out written as
    s = √D behind 1/√D, with the μP initial variance 1/D (theirs is N(0, 1): the standard size,
    under which a step changes f through the aligned features by O(√D·η), docs/limits_training.md).
    Every other factor is 1."""
    _check_optimizer(optimizer)
    weights = model.transformer.weights
    power = 2.0 if optimizer == "sgd" else 1.0
    qk = float(weights.head_dim) ** (power * (weights.alpha_A - 1.0))
    readout = 1.0 if optimizer == "sgd" else float(weights.dim) ** 0.5
    ones = jax.tree_util.tree_map(lambda _: 1.0, eqx.filter(model, eqx.is_inexact_array))
    return eqx.tree_at(
        lambda m: (m.transformer.weights.query, m.transformer.weights.key, m.readout),
        ones,
        (qk, qk, readout),
    )


def centred_output(
    model: ReadoutModel,
    model0: ReadoutModel,
    x0: Float[Array, "n D"],
    gamma0: float | Float[Array, ""],
) -> Float[Array, ""]:
    """F_θ(x) = (f_θ(x) − f_θ₀(x))/γ₀: exactly 0 at θ = θ₀."""
    return (model.raw_output(x0) - model0.raw_output(x0)) / gamma0


# Module-level transformations, so that the compiled step below is reused across calls.
# Adam with the authors' ε = 1e-20 (jax.example_libraries.optimizers.adam(lr, eps=1e-20)): μP
# gradients are O(1/D) and a larger ε would damp them width-dependently.
_OPTIMIZERS = {"sgd": optax.identity(), "adam": optax.scale_by_adam(eps=1e-20)}


@functools.cache
def _heavy_ball(momentum: float) -> optax.GradientTransformation:
    """SGD's direction with heavy-ball momentum, v ← μ v + g (optax.trace, as optax.sgd's
    `momentum`; the authors train with μ = 0.9): one transformation per μ, so that the compiled
    step is reused across calls."""
    return optax.trace(decay=momentum)


def _loss(params, static, model0, inputs, targets, gamma0):
    m = eqx.combine(params, static)
    out = jax.vmap(lambda x: centred_output(m, model0, x, gamma0))(inputs)
    return jnp.mean((out - targets) ** 2)


@eqx.filter_jit
def _step(params, state, static, model0, inputs, targets, gamma0, lr, factors, opt):
    value, grad = jax.value_and_grad(_loss)(params, static, model0, inputs, targets, gamma0)
    # optax's Adam mixes its int32 step count with float decays, which strict dtype promotion
    # (the test suite's setting) refuses; the promotion it needs is the standard one.
    with jax.numpy_dtype_promotion("standard"):
        direction, state = opt.update(grad, state, params)
    params = jax.tree_util.tree_map(lambda p, d, f: p - lr * f * d, params, direction, factors)
    return params, state, value


@eqx.filter_jit
def _states(params, static, inputs):
    return jax.vmap(eqx.combine(params, static).states)(inputs)


class TrainResult(eqx.Module):
    """`losses` (steps + 1,): the loss before each step and after the last; `model`: the trained
    model; `trajectories`: {step: (P, L + 1, n, D) layer states of the training inputs} at the
    requested steps."""

    losses: Float[Array, " steps1"]
    model: ReadoutModel
    trajectories: dict


def train_readout_model(
    model: ReadoutModel,
    inputs: Float[Array, "P n D"],
    targets: Float[Array, " P"],
    *,
    gamma0: float,
    learning_rate: float,
    steps: int,
    optimizer: str = "sgd",
    record_steps: tuple[int, ...] = (),
    faithful: bool = True,
    momentum: float = 0.0,
) -> TrainResult:
    """Full-batch training of the centred output on (inputs, targets), loss
    (1/P) Σ_p (F_θ(x_p) − y_p)², with SGD or Adam at `learning_rate` (take it from
    `sgd_learning_rate` / `adam_learning_rate`). Every parameter array of `model` is trained.
    The token trajectories of all inputs are recorded at each step in `record_steps`
    (0 = before training, `steps` = after the last update). With `faithful` (the default) each
    parameter's rate carries its `learning_rate_factors`, so that the run is the authors'
    parameterisation; `faithful=False` uses `learning_rate` for every parameter. `momentum`
    μ ∈ [0, 1) (SGD only): heavy-ball SGD, θ ← θ − lr·f·v with v ← μ v + ∇loss (v₀ = 0), the
    authors' optimizer at μ = 0.9; 0 is plain SGD."""
    gamma0 = _check_positive(gamma0, "gamma0")
    learning_rate = _check_positive(learning_rate, "learning_rate")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    bad = [s for s in record_steps if not (isinstance(s, int) and 0 <= s <= steps)]
    if bad:
        raise ValueError(
            f"`record_steps` has {bad}, outside 0..steps = 0..{steps}; record within the run."
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"`inputs` has {inputs.shape[0]} sequences but `targets` has {targets.shape[0]}."
        )
    opt = _OPTIMIZERS[_check_optimizer(optimizer)]
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise ValueError(f"`momentum` must be a number in [0, 1), got {momentum!r}.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"`momentum` must lie in [0, 1) (0: plain SGD, 0.9: the authors'), got {momentum!r}."
        )
    if momentum and optimizer != "sgd":
        raise ValueError(
            f"`momentum` is heavy-ball SGD's; optimizer={optimizer!r} has its own moments: "
            "pass momentum=0.0 or optimizer='sgd'."
        )
    if momentum:
        opt = _heavy_ball(float(momentum))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    factors = (
        learning_rate_factors(model, optimizer)
        if faithful
        else jax.tree_util.tree_map(lambda _: 1.0, params)
    )
    factors = jax.tree_util.tree_map(lambda f: jnp.asarray(f, inputs.dtype), factors)
    lr = jnp.asarray(learning_rate, inputs.dtype)
    g0 = jnp.asarray(gamma0, inputs.dtype)
    state = opt.init(params)
    trajectories, losses = {}, []
    for t in range(steps + 1):
        if t in record_steps:
            trajectories[t] = _states(params, static, inputs)
        if t < steps:
            params, state, value = _step(
                params, state, static, model, inputs, targets, g0, lr, factors, opt
            )
            losses.append(value)
    # The final loss from the compiled step (its update is discarded): no extra compile.
    losses.append(_step(params, state, static, model, inputs, targets, g0, lr, factors, opt)[2])
    return TrainResult(jnp.stack(losses), eqx.combine(params, static), trajectories)

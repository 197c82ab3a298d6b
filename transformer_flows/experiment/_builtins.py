"""The built-in entries of every registry, registered through the same calls a user makes."""

import functools
import importlib
import math
from typing import Any

import diffrax
import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .._energy import energy
from .._ensembles import random_weights
from .._field._hardmax import HardmaxAttention
from .._field._kuramoto import Kuramoto
from .._field._placements import NGPT, MixLN, NoNorm, PeriLN, PreLN
from .._field._self_attention import SelfAttention, UnnormalizedSelfAttention
from .._field._sinkhorn import SinkhornAttention
from .._hidden_statistics import centred_cosine, effective_rank
from .._losses import CapMixture, LabeledInputs, LabeledTargets, TargetMeasure, TargetPartition
from .._observables import (
    clustered_fraction,
    count_clusters,
    mean_cosine,
    mean_radius,
    order_parameter,
)
from .._solver._fixed_step import RK4, GeodesicEuler, NormalizedEuler, ResidualLayers
from ._registry import (
    FIELDS,
    FIGURES,
    INTERACTIONS,
    OBSERVABLES,
    PLACEMENTS,
    SOLVERS,
    TASKS,
    WEIGHTS,
    FieldEntry,
    FigureEntry,
    InteractionEntry,
    ObservableEntry,
    PlacementEntry,
    SolverEntry,
    TaskEntry,
    WeightsEntry,
)

# --- fields --------------------------------------------------------------------------------
FIELDS.register(
    "SA",
    FieldEntry(
        SelfAttention,
        rotation_invariant=True,
        theory_model="SA",
        description="softmax self-attention (SA)",
    ),
)
FIELDS.register(
    "USA",
    FieldEntry(
        UnnormalizedSelfAttention,
        random_values=False,
        rotation_invariant=True,
        theory_model="USA",
        description="unnormalised self-attention (USA), V = I",
    ),
)
FIELDS.register(
    "Kuramoto",
    FieldEntry(
        Kuramoto,
        description="angle form on the circle (7.1); params.interaction: a registered h (7.5)",
        named=(("interaction", INTERACTIONS),),
    ),
)

FIELDS.register(
    "Hardmax",
    FieldEntry(
        HardmaxAttention,
        beta_free=True,
        description="hardmax attention on R^d (9.5)–(9.6), the β → ∞ limit: no sweep.beta; "
        "params.tie_tolerance τ (swept or fixed)",
    ),
)


# --- Kuramoto interactions h(u, β) of (7.5), named by model.params.interaction -------------
def _attention_interaction(u, beta):
    import jax.numpy as jnp

    return jnp.exp(beta * jnp.cos(u)) * jnp.sin(u)


def _sine(u, beta):
    import jax.numpy as jnp

    return jnp.sin(u)


def _second_harmonic(u, beta):
    import jax.numpy as jnp

    return jnp.sin(2 * u)


INTERACTIONS.register(
    "attention",
    InteractionEntry(_attention_interaction, "e^{β cos u} sin u: (USA) in angles, (7.1)"),
)
INTERACTIONS.register(
    "sine", InteractionEntry(_sine, "sin u: the classical Kuramoto model (7.2), β-free")
)
INTERACTIONS.register(
    "second_harmonic",
    InteractionEntry(_second_harmonic, "sin 2u: antipodal pairs attract (two clusters), β-free"),
)
FIELDS.register(
    "Sinkhorn",
    FieldEntry(
        SinkhornAttention,
        rotation_invariant=True,
        description="Sinkhorn (doubly stochastic) attention, Sinkformers; iterations=1 is SA",
    ),
)

# --- solvers -------------------------------------------------------------------------------
# Adaptive Runge–Kutta schemes (diffrax; `solve` wraps them in `Renormalized`). Which one a
# phase diagram can use is measured by experiments/figure3_solver_choice.py.
for _name, _cls in (
    ("tsit5", diffrax.Tsit5),
    ("bosh3", diffrax.Bosh3),
    ("dopri5", diffrax.Dopri5),
    ("dopri8", diffrax.Dopri8),
    # Implicit (ESDIRK, L-stable) schemes for stiff flows, e.g. unnormalised attention at
    # large β, whose clusters contract at rates ~ e^β. diffeqsolve gives their root finder
    # the PID controller's rtol/atol.
    ("kvaerno3", diffrax.Kvaerno3),
    ("kvaerno5", diffrax.Kvaerno5),
):
    SOLVERS.register(
        _name, SolverEntry(_cls, adaptive=True, description=f"diffrax.{_cls.__name__}")
    )
SOLVERS.register(
    "normalized_euler",
    SolverEntry(
        NormalizedEuler,
        adaptive=False,
        points_only=True,
        description="the authors' Euler + normalise",
    ),
)
SOLVERS.register("geodesic_euler", SolverEntry(GeodesicEuler, adaptive=False, points_only=True))
SOLVERS.register("rk4", SolverEntry(RK4, adaptive=False))
SOLVERS.register(
    "residual_layers",
    SolverEntry(
        ResidualLayers,
        adaptive=False,
        points_only=True,
        description="the field's own discrete layer (Post-LN: = normalized_euler); with "
        "model.layers, solver.dt null steps one layer, t1/L, per depth",
        euclidean=True,
        layered=True,
    ),
)

# SDE solvers of noisy sweeps (`model.noise`; `solve(..., noise=, key=)`, constant step
# solver.dt). Heun and EulerHeun solve the Stratonovich SDE; the projected Euler–Maruyama
# converges to the same process (the Itô correction of the sphere noises is radial).
for _name, _cls, _text in (
    ("heun", diffrax.Heun, "Stratonovich Heun (weak order 1), the default of noisy solves"),
    ("euler_heun", diffrax.EulerHeun, "Stratonovich Euler–Heun"),
    ("euler_maruyama", diffrax.Euler, "projected Euler–Maruyama (weak order 1)"),
):
    SOLVERS.register(
        _name,
        SolverEntry(_cls, adaptive=False, points_only=True, description=_text, stochastic=True),
    )

# --- weight ensembles (Fig. 5) -------------------------------------------------------------
WEIGHTS.register("identity", WeightsEntry(None, description="Q = K = V = I"))


def _draw(key, d, dtype, *, query_key, value, value_convention="columns"):
    return random_weights(
        key, d, query_key=query_key, value=value, value_convention=value_convention, dtype=dtype
    )


for _query_key in ("ginibre", "goe"):
    for _value in ("identity", "ginibre", "wishart", "qk", "minus_qk"):
        WEIGHTS.register(
            f"{_query_key}:{_value}",
            WeightsEntry(
                functools.partial(_draw, query_key=_query_key, value=_value),
                random_values=_value != "identity",
                description=f"QᵀK {_query_key}, V {_value} (random_weights)",
            ),
        )
# The authors' code multiplies row tokens by V on the right (Vᵀ on column tokens); it differs
# from the paper's V x_j only for non-symmetric V, i.e. Ginibre V and V = ±QᵀK with Ginibre Q, K.
for _value in ("ginibre", "qk", "minus_qk"):
    WEIGHTS.register(
        f"ginibre:{_value}:rows",
        WeightsEntry(
            functools.partial(_draw, query_key="ginibre", value=_value, value_convention="rows"),
            random_values=True,
            description=f"QᵀK ginibre, V {_value}, the authors' row convention (Vᵀ)",
        ),
    )


def _gaussian(key, d, dtype):
    """Q, K, V with i.i.d. N(0, 1/d) entries (the usual initialisation scale; with β = sqrt(d)
    the logits β<Qx, Ky> of unit tokens are O(1))."""
    import jax.numpy as jnp

    return tuple(
        jax.random.normal(k, (d, d), dtype=dtype) / jnp.sqrt(jnp.asarray(d, dtype))
        for k in jax.random.split(key, 3)
    )


def _gaussian_query_key(key, d, dtype):
    Q, K, _ = _gaussian(key, d, dtype)
    return Q, K, None


WEIGHTS.register(
    "gaussian",
    WeightsEntry(_gaussian, random_values=True, description="Q, K, V i.i.d. N(0, 1/d) entries"),
)
WEIGHTS.register(
    "gaussian:identity",
    WeightsEntry(_gaussian_query_key, description="Q, K i.i.d. N(0, 1/d) entries, V = I"),
)


# Random deep transformers in the parameterisation of Bordelon, Chaudhry and Pehlevan
# (tf.limits.random_transformer, docs/limits.md) as per-head weights of SA: head h of layer l
# has W^Q, W^K, W^V (N, D) and W^O (D, N) with N(0, 1) entries, N = D/H, and
#   Q = N^{−α_A} W^Q, K = W^K (logits N^{−α_A}⟨W^Q θ_i, W^K θ_j⟩ at β = 1),
#   V = β₀ L^{1−α_L} W^O W^V / D,
# so SA with layer_duration 1/L on t ∈ [0, 1] is the Post-LN transformer's flow, and the
# residual_layers solver with dt = 1/L its L-layer network (pre_ln placement: Pre-LN).
class RandomTransformerParameters(BaseModel):
    """The scalar parameters of the random_transformer ensemble (each may be swept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha_A: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="logit exponent α_A: A_h = N^{−α_A}⟨q_h, k_h⟩ (1: μP, 0.5: standard 1/√N)",
    )
    alpha_L: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="depth exponent α_L: branches scaled by β₀ L^{−α_L} (1: depth-μP, "
        "0.5: the diffusion, 0: no depth scaling)",
    )
    beta0: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="branch strength β₀ of the residual branches"
    )


def _random_transformer(key, d, dtype, *, heads, layers, alpha_A, alpha_L, beta0):
    import jax.numpy as jnp

    head_dim = d // heads
    kq, kk, kv, ko = jax.random.split(key, 4)
    query = jax.random.normal(kq, (head_dim, d), dtype=dtype)
    keys = jax.random.normal(kk, (head_dim, d), dtype=dtype)
    value = jax.random.normal(kv, (head_dim, d), dtype=dtype)
    output = jax.random.normal(ko, (d, head_dim), dtype=dtype)
    # In the draw's dtype (float32 in sweeps, like every ensemble), scales included.
    logit_scale = jnp.exp(-alpha_A * math.log(head_dim)).astype(dtype)
    branch_scale = (beta0 * jnp.exp((1 - alpha_L) * math.log(layers)) / d).astype(dtype)
    return logit_scale * query, keys, branch_scale * (output @ value)


def _random_transformer_shapes(d, heads, layers, t1):
    bad = [value for value in d if value % heads]
    if bad:
        raise ValueError(
            f"model.d: random_transformer draws d_model = heads·head_dim, a multiple of "
            f"model.heads = {heads}; got d = {bad} (head_dim N = d/heads)"
        )
    if t1 != 1.0:
        raise ValueError(
            f"time.t1: random_transformer's depth runs over t ∈ [0, 1] (layer l acts on "
            f"[l/L, (l+1)/L)), so t1 must be 1, got {t1}"
        )


WEIGHTS.register(
    "random_transformer",
    WeightsEntry(
        _random_transformer,
        random_values=True,
        description="BCP multi-head transformer (tf.limits.random_transformer): heads "
        "model.heads, head_dim d/heads, depth model.layers, α_A, α_L, β₀",
        schema=RandomTransformerParameters,
        check=_random_transformer_shapes,
    ),
)

# --- normalisation placements (docs/models.md) ---------------------------------------------
PLACEMENTS.register("post_ln", PlacementEntry(None, description="x ← LN(x + h·Attn(x)): the field"))
PLACEMENTS.register(
    "pre_ln", PlacementEntry(PreLN, euclidean=True, description="x ← x + h·Attn(LN x)")
)
PLACEMENTS.register(
    "peri_ln", PlacementEntry(PeriLN, euclidean=True, description="x ← x + h·LN(Attn(LN x))")
)
PLACEMENTS.register(
    "ngpt",
    PlacementEntry(NGPT, parameters=("alpha",), description="x ← Norm(x + αh(Norm(Attn x) − x))"),
)
PLACEMENTS.register(
    "mix_ln",
    PlacementEntry(
        MixLN,
        euclidean=True,
        parameters=("post_ln_layers", "layer_duration"),
        description="Post-LN for the first post_ln_layers layers, Pre-LN after",
    ),
)
PLACEMENTS.register(
    "no_norm",
    PlacementEntry(
        NoNorm, euclidean=True, parameters=("rescaled",), description="x ← x + h·Attn(x) on R^d"
    ),
)

# --- observables ---------------------------------------------------------------------------
OBSERVABLES.register(
    "clustered_fraction",
    ObservableEntry(
        lambda x, c: clustered_fraction(x, c.delta),
        # A multiple of 1/(n(n-1)): exact enough in float32, half the size of large sweeps.
        dtype=np.float32,
        inner_products=True,
        long_name="fraction of ordered pairs i≠j with <x_i,x_j> >= 1-δ",
    ),
)
OBSERVABLES.register(
    "cluster_count",
    ObservableEntry(
        lambda x, c: count_clusters(x, c.delta),
        dtype=np.int16,
        inner_products=True,
        long_name="connected components of the graph <x_i,x_j> >= 1-δ",
    ),
)
OBSERVABLES.register(
    "energy",
    ObservableEntry(
        # e^{-β} E_β: finite for large β in float32 (E_β itself overflows from β ≈ 89).
        lambda x, c: energy(x, c.beta, rescaled=True),
        inner_products=True,
        long_name="e^{-β} E_β(x) (rescaled energy; consensus value 1/(2β))",
        reads_beta=True,
    ),
)
OBSERVABLES.register(
    "order_parameter",
    ObservableEntry(
        lambda x, c: order_parameter(x, k=c.harmonic),
        d=2,
        long_name="|(1/n) Σ_j e^{ikθ_j}|",
    ),
)
OBSERVABLES.register(
    "mean_cosine",
    ObservableEntry(
        lambda x, c: mean_cosine(x),
        inner_products=True,
        long_name="ρ = mean over i≠j of <θ_i,θ_j>, θ_i = x_i/|x_i|",
    ),
)
OBSERVABLES.register(
    "mean_radius",
    ObservableEntry(
        lambda x, c: mean_radius(x), radial=True, long_name="mean_i |x_i| (1 on the sphere)"
    ),
)
OBSERVABLES.register(
    "positions",
    ObservableEntry(
        lambda x, c: x, dims=("particle", "component"), per_shape=True, long_name="x_i(t)"
    ),
)

# Hidden-state statistics (docs/models.md): scalar, rotation invariant, any d.
OBSERVABLES.register(
    "centred_cosine",
    ObservableEntry(
        lambda x, c: centred_cosine(x),
        inner_products=True,
        radial=True,
        long_name="mean over i≠j of cos(x_i − x̄, x_j − x̄), x̄ the token mean",
    ),
)
OBSERVABLES.register(
    "effective_rank",
    ObservableEntry(
        lambda x, c: effective_rank(x),
        inner_products=True,
        long_name="exp(entropy of the normalised singular values of [θ_1 … θ_n]) (Roy–Vetterli)",
    ),
)


# Across-head statistics of the attention field's heads at the current tokens (docs/limits.md).
def _head_logits(field, x):
    """(L, H, n, n): β⟨Q_h x_i, K_h x_j⟩ of every layer (L = 1 without a layer axis)."""
    import jax.numpy as jnp

    q = x if field.Q is None else jnp.einsum("...kd,nd->...nk", field.Q, x)
    k = x if field.K is None else jnp.einsum("...kd,nd->...nk", field.K, x)
    logits = field.beta * jnp.einsum("...ik,...jk->...ij", q, k)
    return logits if field.layer_duration is not None else logits[None]


def _across_heads(values):
    """The unbiased variance over heads, averaged over layers and token pairs."""
    import jax.numpy as jnp

    return jnp.mean(jnp.var(values, axis=-3, ddof=1))


OBSERVABLES.register(
    "head_logit_variance",
    ObservableEntry(
        lambda x, c: _across_heads(_head_logits(c.field, x)),
        field=True,
        reads_beta=True,
        long_name="across-head variance of the logits A_h,ij, mean over layers and pairs (i, j)",
    ),
)
OBSERVABLES.register(
    "head_attention_variance",
    ObservableEntry(
        lambda x, c: _across_heads(jax.nn.softmax(_head_logits(c.field, x), axis=-1)),
        field=True,
        reads_beta=True,
        long_name="across-head variance of the attention weights a_h,ij, mean over layers "
        "and pairs (i, j)",
    ),
)
OBSERVABLES.register(
    "token_kernel",
    ObservableEntry(
        lambda x, c: x @ x.T,
        dims=("particle", "partner"),
        inner_products=True,
        per_shape=True,
        long_name="token kernel K_ij = <θ_i, θ_j>",
    ),
)


# --- figures (drawn by `_plot`, imported only when a figure is drawn) ----------------------
def _lazy(name: str, module: str = "_plot"):
    def draw(dataset, config, out):
        plots = importlib.import_module(f".{module}", __package__)
        return getattr(plots, name)(dataset, config, out)

    draw.__name__ = name
    return draw


for _name, _observables, _d in (
    ("phase_diagram", ("clustered_fraction",), None),
    ("circle_snapshots", ("positions",), 2),
    ("movie", ("positions",), 3),
    ("energy", ("energy",), None),
    ("cluster_staircase", ("cluster_count",), None),
):
    FIGURES.register(_name, FigureEntry(_lazy(_name), "simulation", _observables, _d))
FIGURES.register(
    "placement_cosines",
    FigureEntry(
        _lazy("placement_cosines"),
        "simulation",
        ("mean_cosine",),
        description="mean cosine ρ(t) per normalisation placement and start",
    ),
)
for _name in ("landscape", "regimes"):
    FIGURES.register(_name, FigureEntry(_lazy(_name), "theory"))
FIGURES.register("long_context", FigureEntry(_lazy("long_context"), "theory"))
# Causal clustering on the circle (Karagodin–Polyanskiy–Rigollet Fig. 2), for `causal=True`.
FIGURES.register(
    "causal_circle", FigureEntry(_lazy("causal_circle"), "simulation", ("positions",), 2)
)

FIGURES.register(
    "stationary_order_parameter",
    FigureEntry(
        _lazy("stationary_order_parameter", "_noise_plot"),
        "simulation",
        ("order_parameter",),
        2,
        description="noisy sweeps: time-averaged r against κ, on theory.stationary_order_parameter",
        noise="independent",
    ),
)
# The mean-field equation (experiment: mean_field).
FIGURES.register(
    "mean_field_order_parameter",
    FigureEntry(
        _lazy("mean_field_order_parameter", "_mean_field_plot"),
        "mean_field",
        description="mean field: r(t) per κ, one panel per β, the theory's stationary r dashed",
    ),
)
FIGURES.register(
    "mean_field_stationary",
    FigureEntry(
        _lazy("mean_field_stationary", "_mean_field_plot"),
        "mean_field",
        description="mean field: the stationary r against κ, on theory.stationary_order_parameter",
    ),
)
FIGURES.register(
    "head_variance",
    FigureEntry(
        _lazy("head_variance", "_transformer_plot"),
        "simulation",
        ("head_logit_variance",),
        description="across-head variance of the logits at t = 0 against N = d/H, with "
        "the random_transformer prediction N^{1−2α_A}",
    ),
)
FIGURES.register(
    "depth_variance",
    FigureEntry(
        _lazy("depth_variance", "_transformer_plot"),
        "simulation",
        ("mean_cosine",),
        description="variance over weight draws of the final mean cosine against the depth L "
        "(a model.layers list), per α_L, with 1/L and a bootstrap slope interval",
        axes=("layers",),
    ),
)


# Pretrained-model runs (`experiment: pretrained`), drawn by `_pretrained_plot`.
FIGURES.register(
    "pretrained_statistics",
    FigureEntry(
        _lazy("pretrained_statistics", "_pretrained_plot"),
        "pretrained",
        description="hidden-state statistics per layer: model, discrete map, flow overlaid",
    ),
)
FIGURES.register(
    "pretrained_histograms",
    FigureEntry(
        _lazy("pretrained_histograms", "_pretrained_plot"),
        "pretrained",
        description="histograms of <x_i, x_j> at selected layers (GLPR Fig. 1)",
    ),
)


# --- fit tasks -----------------------------------------------------------------------------
class _TaskSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomPoints(_TaskSchema):
    """k Gaussian directions drawn with `seed` (normalised by the task)."""

    random: int = Field(ge=1, description="k: how many random directions")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the directions")


Points = list[list[float]] | RandomPoints
_POINTS = (
    "a list of d-dimensional points (normalised by the task), or {random: k, seed: s}: k "
    "Gaussian directions"
)


def _points(value: Any, name: str, d: int, seed: int) -> np.ndarray:
    if isinstance(value, RandomPoints):
        return np.asarray(jax.random.normal(jax.random.key(value.seed), (value.random, d)))
    points = np.asarray(value, dtype=float)
    if points.ndim != 2 or points.shape[1] != d:
        raise ValueError(
            f"`task.{name}` must be a list of {d}-dimensional points (model.d = {d}), got shape "
            f"{points.shape}."
        )
    return points


class LabeledSchema(_TaskSchema):
    n: int = Field(ge=2, description="tokens per input")
    anchors: Points = Field(description=f"label anchors: {_POINTS}")
    spread: float | None = Field(
        None,
        gt=0,
        description="null: uniform tokens labelled by the nearest anchor; s > 0: caps "
        "normalize(a_c + s g) around the anchors",
    )
    targets: Points = Field(description=f"one target per label: {_POINTS}")


class PartitionSchema(_TaskSchema):
    n: int = Field(ge=2, description="tokens per input")
    anchors: Points = Field(description=f"label anchors: {_POINTS}")
    spread: float | None = Field(
        None,
        gt=0,
        description="null: uniform tokens labelled by the nearest anchor; s > 0: caps "
        "normalize(a_c + s g) around the anchors",
    )
    margin: float = Field(ge=-1, le=1, description="different labels: cosine below this")
    delta: float = Field(gt=0, lt=2, description="components of <x_i, x_j> >= 1 - delta")


class CapSchema(_TaskSchema):
    means: Points = Field(description=f"centres of the caps of the mixture: {_POINTS}")
    spread: float = Field(ge=0, description="cap spread s >= 0: normalize(mean + s g)")


class PairSchema(_TaskSchema):
    source: CapSchema = Field(description="the source measure: a mixture of caps")
    target: CapSchema = Field(description="the measure the source must be sent to")


class MeasureSchema(_TaskSchema):
    n: int = Field(ge=2, description="source samples per input")
    pairs: list[PairSchema] = Field(min_length=1, description="source/target measure pairs")
    num_target_samples: int | None = Field(
        None, ge=1, description="fresh target samples per input (the MMD compares them); null: n"
    )
    kappa: float = Field(4.0, gt=0, description="MMD kernel exp(κ(<x, y> - 1)), κ > 0")


def _inputs(spec, d, seed):
    return LabeledInputs(_points(spec.anchors, "anchors", d, seed), spec.n, spec.spread)


def _labeled(spec: LabeledSchema, d: int, seed: int):
    return LabeledTargets(_inputs(spec, d, seed), _points(spec.targets, "targets", d, seed + 1))


def _partition(spec: PartitionSchema, d: int, seed: int):
    return TargetPartition(_inputs(spec, d, seed), spec.margin, spec.delta)


def _measure(spec: MeasureSchema, d: int, seed: int):
    def mixture(cap: CapSchema, where: str):
        return CapMixture(_points(cap.means, f"pairs.{where}.means", d, seed), cap.spread)

    return TargetMeasure(
        [mixture(p.source, "source") for p in spec.pairs],
        [mixture(p.target, "target") for p in spec.pairs],
        n=spec.n,
        num_target_samples=spec.num_target_samples,
        kappa=spec.kappa,
    )


TASKS.register("labeled", TaskEntry(LabeledSchema, _labeled, "label c must end near target c"))
TASKS.register("partition", TaskEntry(PartitionSchema, _partition, "labels merge, others apart"))
TASKS.register("measure", TaskEntry(MeasureSchema, _measure, "final measure matches a target"))

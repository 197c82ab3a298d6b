"""Contract tests over the experiment registries, parametrized over their contents: an entry
registered later (built-in or in `_builtins.py`) is tested here without a new test.

- FIELDS × SOLVERS (explicit ones; implicit ones in tests/test_solvers.py): a solve under jit,
  vmap over β and differentiated w.r.t. β stays on the sphere, is batch-independent, converges
  to a tight reference at the solver's tolerance or declared order, and its derivative matches
  central finite differences.
- OBSERVABLES: known values, declared dtype/dims, rotation invariance of `inner_products`
  entries, jit and vmap.
- WEIGHTS: shapes, determinism, `random_values`.
- FIGURES: drawn from tiny runs; their declared needs are enforced by the config schema.
- TASKS: the shipped examples validate and build tasks that sample points on the sphere.
- A user-registered field swept over a parameter: the axis is right (gain rescales time).
"""

import functools
import re
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
import yaml

import transformer_flows as tf
from transformer_flows.experiment import (
    FIELDS,
    FIGURES,
    OBSERVABLES,
    SOLVERS,
    TASKS,
    WEIGHTS,
    ConfigError,
    FieldEntry,
    ObservableContext,
    build_field,
    config_from_dict,
    load_config,
    run_experiment,
    run_pretrained,
)

from helpers import RandomStatesModel

# Tiny programs compiled once each: XLA's optimisation passes cost more than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *example_args):
    """`jax.jit(fn)` compiled ahead of time for arguments shaped like `example_args`."""
    return jax.jit(fn).trace(*example_args).lower().compile(compiler_options=FAST_COMPILE)


# --- 1. every field × every solver --------------------------------------------------------

N_TOKENS, HORIZON, DT = 3, 0.5, 0.05
TIMES = np.linspace(0.0, HORIZON, 6)
BETAS = np.array([0.5, 2.0])
TOL = 1e-8  # rtol = atol of the adaptive solvers under test
REFERENCE_TOL = 1e-12  # Tsit5 reference
FD_STEP = 1e-4
MAX_STEPS = 512  # Bosh3 at tol 1e-8 takes ~100 steps, the Tsit5 reference 50


def _initial_state(entry):
    key = jax.random.key(20240601)
    if entry.state == "angles":
        return jnp.array([0.3, 2.0, 4.4])  # (n,) angles on the circle (d = 2)
    return tf.normalize(jax.random.normal(key, (N_TOKENS, 3)))


def _weights(entry, d=3):
    """Random Q, K (and V where the field may take random values), or None."""
    if not entry.takes_weights:
        return None
    Q, K, V = jax.random.normal(jax.random.key(7), (3, d, d)) / np.sqrt(d)
    return Q, K, (V if entry.random_values else None)


def _points(entry, state):
    return tf.angles_to_points(state) if entry.state == "angles" else state


def _readout(entry, state):
    """A scalar of the final state: <R, x(T)> for a fixed R (points of the circle for angles)."""
    points = _points(entry, state)
    R = jnp.linspace(-1.0, 1.0, points.size).reshape(points.shape)
    return jnp.sum(R * points)


def _trajectory(entry, solver, beta, dt, *, rtol, atol, adjoint=None):
    field = build_field(entry, beta, {}, _weights(entry))
    return tf.solve(
        field,
        _initial_state(entry),
        TIMES,
        solver=solver,
        dt0=dt,
        rtol=rtol,
        atol=atol,
        max_steps=MAX_STEPS,
        adjoint=adjoint or diffrax.RecursiveCheckpointAdjoint(),
    ).xs


def _refused(entry, solver_entry) -> bool:
    """`solve` refuses point steppers (sphere steps, discrete layers) for angle fields."""
    return entry.state == "angles" and solver_entry.points_only


def _fd_betas():
    return [b + s for b in BETAS for s in (0.0, -FD_STEP, FD_STEP)]


@functools.cache
def _reference(field_name):
    """Unbatched Tsit5 solves at tolerance 1e-12: β -> trajectory (the single-solve loop)."""
    entry = FIELDS[field_name]

    def trajectory(beta):
        return _trajectory(
            entry, diffrax.Tsit5(), beta, None, rtol=REFERENCE_TOL, atol=REFERENCE_TOL
        )

    single = _compiled(trajectory, jnp.float64(1.0))
    return {float(b): np.asarray(single(jnp.float64(b))) for b in _fd_betas()}


@functools.cache
def _program(field_name, solver_name):
    """One compiled program per field × solver: vmap over β of (readout, trajectory) and the
    derivative of the readout w.r.t. β.

    Forward mode (`jax.jvp`, `diffrax.ForwardMode`): β is one scalar, and compiling the
    reverse pass (`jax.grad` through the checkpointed adjoint) for all field × solver pairs
    costs ~2.5x as much (measured: 130 s instead of 55 s for this test). Reverse mode through
    `solve` is tested in test_gradients.py."""
    entry, solver_entry = FIELDS[field_name], SOLVERS[solver_name]
    solver = solver_entry.make()

    def readout(beta, dt):
        xs = _trajectory(
            entry,
            solver,
            beta,
            None if solver_entry.adaptive else dt,
            rtol=TOL,
            atol=TOL,
            adjoint=diffrax.ForwardMode(),
        )
        return _readout(entry, xs[-1]), xs

    def derivative(beta, dt):
        (value, xs), (slope, _) = jax.jvp(lambda b: readout(b, dt), (beta,), (jnp.ones_like(beta),))
        return value, xs, slope

    compiled = _compiled(
        jax.vmap(derivative, in_axes=(0, None)), jnp.asarray(BETAS), jnp.float64(DT)
    )

    def run(betas, dt=DT):
        return tuple(np.asarray(a) for a in compiled(jnp.asarray(betas, jnp.float64), dt))

    return run


def _implicit(name: str) -> bool:
    return isinstance(SOLVERS[name].make(), diffrax.AbstractImplicitSolver)


# Implicit solvers (Kvaerno) take minutes to compile under vmap and forward-mode
# differentiation; tests/test_solvers.py checks them (exact solution, sphere, β-gradient, a
# config sweep) with one compile each.
# SDE solvers (`stochastic`) serve noisy sweeps only: their contract is in
# tests/test_config_models.py.
# β-free fields (Hardmax, the β → ∞ limit) have no β to differentiate: their contract (a
# sweep is the field's solve, the exact stationary solution) is in tests/test_config_models.py.
FIELD_SOLVER = [
    (f, s)
    for f in FIELDS.names()
    for s in SOLVERS.names()
    if not _implicit(s) and not SOLVERS[s].stochastic and not FIELDS[f].beta_free
]


@pytest.mark.parametrize("field_name, solver_name", FIELD_SOLVER)
def test_field_solver_contract(field_name, solver_name):
    entry, solver_entry = FIELDS[field_name], SOLVERS[solver_name]
    solver = solver_entry.make()
    if _refused(entry, solver_entry):
        with pytest.raises(
            ValueError, match="does not keep its state on a sphere|moves angles and has none"
        ):
            _trajectory(entry, solver, 1.0, DT, rtol=TOL, atol=TOL)
        return
    run = _program(field_name, solver_name)
    reference = _reference(field_name)
    values, xs, slopes = run(BETAS)
    assert xs.shape == (len(BETAS), len(TIMES)) + _initial_state(entry).shape
    assert np.all(np.isfinite(xs)) and np.all(np.isfinite(slopes))
    if entry.state == "points":
        # On the sphere at every save time (the solvers retract every step).
        np.testing.assert_allclose(np.linalg.norm(xs, axis=-1), 1.0, rtol=0, atol=1e-12)

    # vmap does not couple the batch: β alone (a batch of copies) gives the same solve.
    for i, beta in enumerate(BETAS):
        _, alone, alone_slope = run([beta, beta])
        np.testing.assert_allclose(alone[0], xs[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(alone_slope[0], slopes[i], rtol=1e-10, atol=1e-12)

    exact = np.stack([reference[float(b)] for b in BETAS])
    error = np.max(np.abs(xs - exact))
    exact_slope = np.array(
        [
            (
                _readout(entry, reference[b + FD_STEP][-1])
                - _readout(entry, reference[b - FD_STEP][-1])
            )
            / (2 * FD_STEP)
            for b in BETAS
        ]
    )
    if solver_entry.adaptive:
        # Global error at the tolerance (measured: <= 2.5 tol); the derivative is the flow's
        # derivative up to ~tol (measured: <= 1.6 tol).
        assert error <= 20 * TOL
        np.testing.assert_allclose(slopes, exact_slope, rtol=0, atol=20 * TOL)
    else:
        # The declared order p: error <= dt^p, and halving dt divides it by 2^(p ± 1/2).
        order = solver.order(None)
        _, xs_half, _ = run(BETAS, DT / 2)
        observed_order = np.log2(error / np.max(np.abs(xs_half - exact)))
        assert error <= DT**order
        assert abs(observed_order - order) <= 0.5, observed_order
        # The derivative is the exact derivative of the discrete map: central differences of
        # the same solver agree to O(h²) (and differ from the flow's derivative by O(dt^p)).
        for i, beta in enumerate(BETAS):
            values_fd, _, _ = run([beta - FD_STEP, beta + FD_STEP])
            fd = (values_fd[1] - values_fd[0]) / (2 * FD_STEP)
            np.testing.assert_allclose(slopes[i], fd, rtol=1e-7, atol=1e-9)
        assert np.max(np.abs(slopes - exact_slope)) <= DT**order


REFUSED = [(f, s) for f, s in FIELD_SOLVER if _refused(FIELDS[f], SOLVERS[s])]


@pytest.mark.parametrize("field_name, solver_name", REFUSED)
def test_config_refuses_what_solve_refuses(field_name, solver_name):
    raw = {
        "model": {"field": field_name, "n": 4, "d": 2},
        "sweep": {"beta": 1.0, "starts": 1},
        "time": {"t1": 1.0, "num": 2},
        "solver": {"name": solver_name, "dt": 0.1},
    }
    with pytest.raises(ConfigError, match=solver_name):
        config_from_dict(raw)


# --- 2. every observable ------------------------------------------------------------------


def _equally_spaced(n):
    """n equally spaced points of the circle."""
    return tf.angles_to_points(2 * jnp.pi * jnp.arange(n, dtype=float) / n)


def _lift(points, d):
    """Points of R^k as points of R^d (zero padding)."""
    return jnp.pad(points, ((0, 0), (0, d - points.shape[1])))


def _known_values(name, d, beta):
    """(configuration (n, d), harmonic, expected value) triples with a known answer."""
    e1, e2 = jnp.eye(d)[0], jnp.eye(d)[1]
    consensus = jnp.tile(e1, (4, 1))
    antipodal = jnp.stack([e1, -e1])
    spaced = _lift(_equally_spaced(4), d)  # <x_i, x_j> = cos(π(i - j)/2) ∈ {1, 0, -1}
    # Clusters {0, 1, 2} (within 2e-6 of each other) and {3}: 6 of 12 ordered pairs.
    near = tf.normalize(jnp.stack([e1, e1 + 1e-3 * e2, e1 - 1e-3 * e2, e2]))
    known = {
        "clustered_fraction": [
            (consensus, 1, 1.0),
            (antipodal, 1, 0.0),
            (spaced, 1, 0.0),
            (near, 1, 0.5),
        ],
        "cluster_count": [(consensus, 1, 1), (antipodal, 1, 2), (spaced, 1, 4), (near, 1, 2)],
        # e^{-β} E_β = (1/(2βn²)) Σ_ij e^{β(<x_i,x_j> - 1)}.
        "energy": [
            (consensus, 1, 1 / (2 * beta)),
            (antipodal, 1, (1 + np.exp(-2 * beta)) / (4 * beta)),
            (spaced, 1, (1 + np.exp(-beta)) ** 2 / (8 * beta)),
        ],
        # |mean_j e^{ikθ_j}|: 1 at consensus; 0 for 4 equally spaced angles unless 4 | k.
        "order_parameter": [
            (consensus, 1, 1.0),
            (antipodal, 1, 0.0),
            (spaced, 1, 0.0),
            (spaced, 2, 0.0),
            (spaced, 4, 1.0),
        ],
        "positions": [(near, 1, near), (spaced, 1, spaced)],
        # mean over i ≠ j of <θ_i, θ_j> = (|Σθ|² − n)/(n(n−1)); 1 on the sphere for the radius.
        "mean_cosine": [(consensus, 1, 1.0), (antipodal, 1, -1.0), (spaced, 1, -1 / 3)],
        "mean_radius": [(consensus, 1, 1.0), (2.5 * antipodal, 1, 2.5)],
        # Centring first (consensus: every token at the mean, cosine 0); the effective rank
        # exp(H(σ/Σσ)) is 1 on a line and 2 for ±e1, ±e2 (singular values √2, √2).
        "centred_cosine": [(consensus, 1, 0.0), (antipodal, 1, -1.0), (spaced, 1, -1 / 3)],
        "effective_rank": [(consensus, 1, 1.0), (antipodal, 1, 1.0), (spaced, 1, 2.0)],
        # Heads Q_h = c_h I (`_context`'s field): A_h,ij = β c_h <x_i, x_j>, so the across-head
        # variance is β² Var(c) mean_ij <x_i, x_j>² (spaced: 1 on 4 pairs, −1 on 4, 0 on 8);
        # at consensus every row of every head is uniform, a_h,ij = 1/n.
        "head_logit_variance": [
            (consensus, 1, beta**2 * np.var(HEAD_SCALES, ddof=1)),
            (spaced, 1, beta**2 * np.var(HEAD_SCALES, ddof=1) / 2),
        ],
        # Antipodal pair: a_h = [σ(2βc_h), σ(−2βc_h)] per row, σ the logistic function.
        "head_attention_variance": [
            (consensus, 1, 0.0),
            (antipodal, 1, np.var(1 / (1 + np.exp(-2 * beta * HEAD_SCALES)), ddof=1)),
        ],
        "token_kernel": [(spaced, 1, spaced @ spaced.T), (antipodal, 1, antipodal @ antipodal.T)],
    }
    if name not in known:
        pytest.fail(f"observable {name!r} has no known values: add them to _known_values")
    return known[name]


HEAD_SCALES = np.array([0.5, 1.0, 2.0])


def _context(beta, harmonic=1, delta=1e-3, d=3):
    """β, the options, and (for observables that read it) a 3-head attention field on R^d
    with Q_h = c_h I, K = V = I."""
    beta = jnp.asarray(beta, jnp.float64)
    Q = jnp.asarray(HEAD_SCALES)[:, None, None] * jnp.eye(d)[None]
    return ObservableContext(beta, delta, harmonic, tf.SelfAttention(beta=beta, Q=Q))


def _random_configuration(key, n, d):
    """Random tokens with a tight pair and a loose pair, so threshold statistics are not
    trivially 0."""
    x = jax.random.normal(key, (n, d))
    x = x.at[1].set(x[0] + 1e-3 * x[1]).at[3].set(x[2] + 0.3 * x[3])
    return tf.normalize(x)


def _observable_dim(entry):
    return entry.d if entry.d is not None else 3


@pytest.mark.parametrize("name", OBSERVABLES.names())
def test_observable_known_values(name):
    entry = OBSERVABLES[name]
    beta = 1.5
    for x, harmonic, expected in _known_values(name, _observable_dim(entry), beta):
        value = entry.function(x, _context(beta, harmonic, d=x.shape[-1]))
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OBSERVABLES.names())
def test_observable_dtype_dims_shape(name):
    entry = OBSERVABLES[name]
    d = _observable_dim(entry)
    shapes = set()
    for n, dim in ((5, d), (6, d)) + (((5, d + 1),) if entry.d is None else ()):
        x = _random_configuration(jax.random.key(n + 10 * dim), n, dim)
        value = np.asarray(entry.function(x, _context(1.0, d=dim)))
        assert value.ndim == len(entry.dims)
        sizes = {"particle": n, "partner": n, "component": dim}
        for size, dim_name in zip(value.shape, entry.dims, strict=True):
            if dim_name in sizes:
                assert size == sizes[dim_name]
        shapes.add(value.shape)
        # Stored as `entry.dtype` without losing the value.
        stored = value.astype(entry.dtype)
        if np.issubdtype(entry.dtype, np.integer):
            assert np.issubdtype(value.dtype, np.integer)
            np.testing.assert_array_equal(stored, value)
        else:
            assert np.issubdtype(value.dtype, np.floating)
            eps = np.finfo(entry.dtype).eps
            np.testing.assert_allclose(stored, value, rtol=eps, atol=eps)
    # `per_shape` (one n and one d per config) exactly when the shape follows n and d.
    assert entry.per_shape == (len(shapes) > 1)


INNER_PRODUCT_OBSERVABLES = [n for n in OBSERVABLES.names() if OBSERVABLES[n].inner_products]


@pytest.mark.parametrize("name", INNER_PRODUCT_OBSERVABLES)
def test_inner_product_observables_see_the_gram_matrix_only(name):
    """What `solve_in_span` relies on: the value is unchanged by an orthogonal map of R^d and
    by an isometric embedding into a larger R^d' (span coordinates vs ambient ones)."""
    entry = OBSERVABLES[name]
    d = _observable_dim(entry)
    x = _random_configuration(jax.random.key(5), 5, d)
    rotation, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(6), (d, d)))
    maps = [x @ rotation.T]
    if entry.d is None:
        # Isometry R^d -> R^(d+2): orthonormal columns.
        B, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(8), (d + 2, d)))
        maps.append(x @ B.T)
    value = entry.function(x, _context(2.0, d=d))
    for mapped in maps:
        context = _context(2.0, d=mapped.shape[-1])
        np.testing.assert_allclose(entry.function(mapped, context), value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", OBSERVABLES.names())
def test_observable_under_jit_and_vmap(name):
    entry = OBSERVABLES[name]
    d = _observable_dim(entry)
    xs = jnp.stack([_random_configuration(k, 5, d) for k in jax.random.split(jax.random.key(9), 3)])
    betas = jnp.array([0.5, 1.0, 4.0])

    def observe(x, beta):
        return entry.function(x, _context(beta, d=d))

    loop = np.stack([np.asarray(observe(x, b)) for x, b in zip(xs, betas, strict=True)])
    np.testing.assert_allclose(jax.jit(jax.vmap(observe))(xs, betas), loop, rtol=1e-12, atol=0)
    np.testing.assert_allclose(jax.jit(observe)(xs[0], betas[0]), loop[0], rtol=1e-12, atol=0)


# --- 3. every weight ensemble -------------------------------------------------------------


@pytest.mark.parametrize("name", WEIGHTS.names())
def test_weight_ensemble_contract(name):
    entry = WEIGHTS[name]
    if entry.draw is None:  # Q = K = V = I: no matrices, no random values
        assert not entry.random_values
        return

    # A parameterised ensemble draws one head of one layer of a stack (H = 2 heads of
    # dimension k = d/H here), at its declared defaults.
    extra = {} if entry.schema is None else {"heads": 2, "layers": 3, **entry.schema().model_dump()}
    rows = 4 if entry.schema is None else 2

    def draw(keys, dtype):
        # As the sweep program uses it: vmapped over stacks of heads and layers (eager here:
        # the primitives compiled for one ensemble serve the next).
        return jax.vmap(lambda key: entry.draw(key, 4, dtype, **extra))(keys)

    keys = jax.random.split(jax.random.key(3), 3)
    (Q, K, V), again = draw(keys, jnp.float64), draw(keys[::-1], jnp.float64)
    assert (V is not None) == entry.random_values
    for W, W_again, shape in zip((Q, K, V), again, ((rows, 4), (rows, 4), (4, 4)), strict=True):
        if W is None:
            continue
        assert W.shape == (3, *shape) and W.dtype == jnp.float64
        assert np.all(np.isfinite(W))
        # Deterministic for a key (the same keys in reverse order give the same draws).
        np.testing.assert_array_equal(W_again[::-1], W)
    # Different keys, different query-key products.
    products = np.asarray(jnp.swapaxes(Q, -1, -2) @ K)
    assert not np.allclose(products[0], products[1])
    # Drawn in float32 by sweeps of any precision.
    assert all(W.dtype == jnp.float32 for W in draw(keys, jnp.float32) if W is not None)


# --- 4. every figure ----------------------------------------------------------------------

MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".gif": (b"GIF87a", b"GIF89a")}


def _figure_config(name, *, observables=None, d=None, experiment=None, noise=True):
    """The smallest config that satisfies the figure's declared needs (or, with an argument
    given, one that lacks a need)."""
    entry = FIGURES[name]
    experiment = experiment or entry.experiment
    if experiment == "pretrained":  # `figure_runs` passes a stand-in model, no checkpoint
        return {
            "experiment": "pretrained",
            "name": f"tiny_{name}",
            "checkpoint": "unused",
            "texts": ["the cat sat on the mat", "a quick fox jumps over dogs"],
            "figures": [name],
        }
    if experiment == "mean_field":
        # The static settings of tests/test_mean_field_config.py (Tsit5, SA, M = 8, 31 saves,
        # max_steps 2000): in one process the solve compiled there serves here.
        return {
            "experiment": "mean_field",
            "name": f"tiny_{name}",
            "mean_field": {"model": "SA", "modes": 8},
            "sweep": {"beta": 1.0, "kappa": 4.0},
            "time": {"t1": 10.0, "num": 31},
            "solver": {"name": "tsit5", "max_steps": 2000},
            "figures": [name],
        }
    if experiment == "theory":
        return {
            "experiment": "theory",
            "name": f"tiny_{name}",
            "theory": {
                "n": 8,
                "d": [2, 3],
                "beta": [1.0, 4.0],
                "tau": {"start": -3.0, "stop": 3.0, "num": 11},
                "t1": 5.0,
                # Sections some theory figures need (numpy, milliseconds).
                "long_context": {"rho": [0.5], "log10_n": [1.0, 2.0, 3.0]},
            },
            "figures": [name],
        }
    raw = {
        "name": f"tiny_{name}",
        "precision": "float64",
        "model": {"field": "SA", "n": 4, "d": [d or entry.d or 3]},
        "sweep": {"beta": [1.0, 4.0], "starts": 2},
        "time": {"t1": 1.0, "num": 3},
        "observables": {"names": observables or list(entry.observables) or ["clustered_fraction"]},
        "figures": [name],
    }
    if any(OBSERVABLES[o].field for o in raw["observables"]["names"]):
        # Observables of the heads of random weights.
        raw["model"].update(weights=["gaussian"], heads=2)
    if name == "depth_variance":  # a list of depths of random transformers, one layer a step
        raw["model"].update(weights="random_transformer", heads=1, layers=[1, 2])
        raw["solver"] = {"name": "residual_layers", "dt": None}
    if entry.noise is not None and noise:
        raw["model"]["noise"] = {"kind": entry.noise, "kappa": 4.0}
        raw["solver"] = {"name": "euler_maruyama", "dt": 0.25}
    return raw


@pytest.fixture(scope="module")
def figure_runs(tmp_path_factory):
    """name -> (dataset, config) of a tiny run made for that figure (each computed once)."""

    @functools.cache
    def run(name):
        config = config_from_dict(_figure_config(name))
        out = tmp_path_factory.mktemp(f"run_{name}")
        if config.experiment == "pretrained":  # random states stand in for a checkpoint
            return run_pretrained(config, out, progress=False, model=RandomStatesModel()), config
        return run_experiment(config, out, progress=False), config

    return run


@pytest.mark.parametrize("name", FIGURES.names())
def test_figure_draws_from_a_tiny_run(name, figure_runs, tmp_path):
    dataset, config = figure_runs(name)
    paths = FIGURES[name].draw(dataset, config, tmp_path)
    assert paths
    for path in paths:
        assert path.is_file() and path.parent == tmp_path
        assert path.suffix in MAGIC, f"{name} wrote {path.name}: add its magic bytes here"
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(MAGIC[path.suffix])


def _needs():
    """(figure, need, value) for every declared need of every figure."""
    needs = []
    for name in FIGURES.names():
        entry = FIGURES[name]
        needs.append((name, "experiment", entry.experiment))
        needs += [(name, "observable", observable) for observable in entry.observables]
        if entry.d is not None:
            needs.append((name, "d", entry.d))
        if entry.noise is not None:
            needs.append((name, "noise", entry.noise))
        needs += [(name, "axis", axis) for axis in entry.axes]
    return needs


@pytest.mark.parametrize("name, need, value", _needs())
def test_figure_needs_are_enforced(name, need, value):
    config_from_dict(_figure_config(name))  # what it needs is enough
    if need == "experiment":
        other = "simulation" if value == "theory" else "theory"
        raw = _figure_config(name, experiment=other)
    elif need == "observable":
        others = [o for o in FIGURES[name].observables if o != value]
        raw = _figure_config(
            name,
            observables=others
            or [next(o for o in OBSERVABLES.names() if o != value and OBSERVABLES[o].d is None)],
        )
    elif need == "noise":
        raw = _figure_config(name, noise=False)
    elif need == "axis":  # one value where the figure draws against several
        raw = _figure_config(name)
        raw["model"][value] = raw["model"][value][0]
    else:
        raw = _figure_config(name, d=3 if value == 2 else 2)
    with pytest.raises(ConfigError, match=re.escape(f"figure {name!r}")):
        config_from_dict(raw)


# --- 5. every fit task --------------------------------------------------------------------

FIT_EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "configs").glob("fit_*.yaml"))


def _examples(kind):
    found = []
    for path in FIT_EXAMPLES:
        raw = yaml.safe_load(path.read_text())
        if raw["task"]["kind"] == kind:
            found.append((path, raw))
    return found


@pytest.mark.parametrize("kind", TASKS.names())
def test_task_contract(kind):
    entry = TASKS[kind]
    examples = _examples(kind)
    assert examples, f"ship an example configs/fit_*.yaml with task kind {kind!r}"
    for path, raw in examples:
        keys = {key: value for key, value in raw["task"].items() if key != "kind"}
        spec = entry.schema.model_validate(keys)
        assert load_config(path).task.spec() == spec  # the whole example validates too
        with pytest.raises(pydantic.ValidationError):  # a misspelt key is an error
            entry.schema.model_validate({**keys, "not_a_key": 1})
        d = raw["model"]["d"]
        task = entry.build(spec, d, 0)
        assert isinstance(task, tf.AbstractTask) and task.dim == d
        # Under jit, as fits batch them.
        x0, aux = jax.jit(lambda key: task.sample(key))(jax.random.key(1))
        assert x0.shape == (spec.n, d)
        np.testing.assert_allclose(np.linalg.norm(x0, axis=-1), 1.0, rtol=0, atol=1e-12)
        loss, grad = jax.jit(jax.value_and_grad(lambda x, a: task.loss(x, a)))(x0, aux)
        assert np.isfinite(loss) and loss >= 0
        assert grad.shape == x0.shape and np.all(np.isfinite(grad))


# --- 6. a user-registered field swept over its own parameter ------------------------------


class GainAttention(tf.AbstractSphereField):
    """ẋ_i = gain · P^⊥_{x_i}(Σ_j softmax_j(β<x_i, x_j>) x_j): SA with identity weights, time
    rescaled by `gain` (x_gain(t) = x_1(gain · t))."""

    beta: jax.Array = eqx.field(converter=jnp.asarray)
    gain: jax.Array = eqx.field(default=1.0, converter=jnp.asarray)

    def drift(self, t, x, args=None):
        return self.gain * tf.attend(x, self.beta, None, None, None, normalized=True)

    def jump_times(self):
        return None

    def check_state(self, x):
        if getattr(x, "ndim", None) != 2:
            raise ValueError(f"GainAttention moves points (n, d), got {getattr(x, 'shape', x)}")


@pytest.fixture
def gain_field():
    name = "ContractsGainAttention"
    assert name not in FIELDS
    FIELDS.register(name, FieldEntry(GainAttention, description="test_contracts"))
    try:
        yield name
    finally:
        FIELDS.unregister(name)
    assert name not in FIELDS


def test_user_field_parameter_axis_rescales_time(gain_field, tmp_path):
    times = np.linspace(0.0, 4.0, 9)  # gain 2 at t ∈ {0, 0.5, 1} is gain 0.5 at 4t ∈ {0, 2, 4}
    config = config_from_dict(
        {
            "name": "gain",
            "precision": "float64",
            "model": {"field": gain_field, "n": 4, "d": 3},
            "sweep": {"beta": 1.0, "starts": 2, "params": {"gain": [0.5, 2.0]}},
            "time": {"t1": float(times[-1]), "num": len(times)},
            "solver": {"rtol": 1e-10, "atol": 1e-10},
            "observables": {"names": ["clustered_fraction", "energy", "positions"], "delta": 0.05},
        }
    )
    dataset = run_experiment(config, tmp_path, progress=False)
    assert "gain" in dataset.dims
    np.testing.assert_array_equal(dataset["gain"], [0.5, 2.0])
    np.testing.assert_allclose(dataset["time"], times)
    fast, slow = dataset.sel(gain=2.0), dataset.sel(gain=0.5)
    early, late = fast.isel(time=[0, 1, 2]), slow.isel(time=[0, 4, 8])
    np.testing.assert_allclose(early["positions"].values, late["positions"].values, atol=1e-8)
    np.testing.assert_allclose(early["energy"].values, late["energy"].values, rtol=1e-8)
    np.testing.assert_array_equal(
        early["clustered_fraction"].values, late["clustered_fraction"].values
    )
    # Not vacuous: the tokens move and clusters form within the compared window.
    fractions = fast["clustered_fraction"].isel(time=[0, 2]).values
    assert np.all(fractions[..., 0] < fractions[..., 1])

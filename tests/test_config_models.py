"""Models reached from configs (issues 19 and 23): noisy sweeps (`model.noise`, the SDE solver
entries, the per-start noise key), and the registry contract of each new entry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows.experiment import (
    INTERACTIONS,
    SOLVERS,
    ConfigError,
    config_from_dict,
    fingerprint,
    load_config,
    run_sweep,
)
from transformer_flows.experiment._program import NOISE_STREAM

# --- SDE solver entries --------------------------------------------------------------------

STOCHASTIC = [name for name in SOLVERS if SOLVERS[name].stochastic]


@pytest.fixture(scope="module")
def pure_diffusion():
    """One compiled noisy solve of the zero field per SDE solver: the mean of <x_i(t), x_i(0)>
    over n tokens on S² under IndependentNoise(κ)."""
    n, d, kappa, t1, dt = 2000, 3, 2.0, 0.5, 0.025
    x0 = tf.sample_sphere(jax.random.key(0), n, d)
    compiled = {}

    def run(name):
        if name not in compiled:

            @jax.jit
            def mean_overlap(key):
                xs = tf.solve(
                    tf.limits.NoDrift(),
                    x0,
                    jnp.array([0.0, t1]),
                    solver=SOLVERS[name].make(),
                    dt0=dt,
                    noise=tf.IndependentNoise(kappa),
                    key=key,
                ).xs
                overlap = jnp.sum(xs[-1] * x0, axis=-1)
                radius = jnp.max(jnp.abs(jnp.linalg.norm(xs[-1], axis=-1) - 1))
                return jnp.mean(overlap), jnp.std(overlap), radius

            compiled[name] = mean_overlap(jax.random.key(1))
        return compiled[name]

    return run, n, d, kappa, t1, dt


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sde_solver_contract(name, pure_diffusion):
    """Brownian motion on S^{d-1} with generator (1/κ)Δ: E<x(t), x(0)> = exp(-(d-1)t/κ)."""
    run, n, d, kappa, t1, dt = pure_diffusion
    entry = SOLVERS[name]
    assert entry.stochastic and not entry.adaptive and entry.description
    mean, spread, radius = (float(v) for v in run(name))
    exact = np.exp(-(d - 1) * t1 / kappa)
    # 5 standard errors of the sample mean, plus a weak error O(dt) (first-order schemes).
    assert abs(mean - exact) <= 5 * spread / np.sqrt(n) + dt, (mean, exact)
    assert radius <= 1e-12  # back on the sphere after every step
    # Positive control: the band separates the law at another κ.
    assert abs(mean - np.exp(-(d - 1) * t1 / (3 * kappa))) > 5 * spread / np.sqrt(n) + dt


# --- noisy sweeps --------------------------------------------------------------------------

NOISY = {
    "model": {"field": "SA", "n": 16, "d": 2, "noise": {"kind": "independent"}},
    "sweep": {"beta": [1.0], "starts": 2, "seed": 5, "params": {"kappa": [2.5, 4.0]}},
    "time": {"t1": 0.5, "num": 3},
    "solver": {"name": "heun", "dt": 0.05},
    "observables": {"names": ["positions", "order_parameter"]},
}


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    config = config_from_dict(NOISY)
    return config, run_sweep(config, tmp_path_factory.mktemp("noisy"), progress=False)


def test_noisy_sweep_is_the_documented_sde_per_start(noisy_run):
    """Each (start, κ) of the dataset is `solve(..., noise=IndependentNoise(κ), key=...)` from
    the noiseless sweep's start, with the start's noise key fold_in(start key, NOISE_STREAM)."""
    config, dataset = noisy_run
    positions = dataset["positions"].squeeze(("n", "d", "weights", "beta")).values
    assert positions.shape == (2, 2, 3, 16, 2)  # start, kappa, time, particle, component
    assert bool(dataset["succeeded"].all())
    ts = jnp.asarray(config.times)

    @jax.jit
    def expected(start, kappa):
        start_key = jax.random.fold_in(jax.random.key(5), start)
        x0 = tf.sample_sphere(jax.random.split(start_key)[0], 16, 2, dtype=jnp.float32)
        return tf.solve(
            tf.SelfAttention(beta=1.0),
            tf.normalize(x0.astype(jnp.float64)),
            ts,
            solver=SOLVERS["heun"].make(),
            dt0=0.05,
            noise=tf.IndependentNoise(kappa),
            key=jax.random.fold_in(start_key, NOISE_STREAM),
        ).xs

    for start in range(2):
        for k, kappa in enumerate((2.5, 4.0)):
            np.testing.assert_allclose(
                positions[start, k], expected(start, kappa), rtol=0, atol=1e-12
            )
    # The order parameter is that of the saved positions; the noise moved the tokens, and
    # every start has a path of its own.
    r = np.abs(np.mean(positions[..., 0] + 1j * positions[..., 1], axis=-1))
    np.testing.assert_allclose(
        dataset["order_parameter"].squeeze(("n", "d", "weights", "beta")).values, r, atol=1e-12
    )
    noiseless = config_from_dict(
        {
            **NOISY,
            "model": {**NOISY["model"], "noise": None},
            "sweep": {**NOISY["sweep"], "params": {}},
            "solver": {"name": "tsit5"},
        }
    )
    assert "noise" not in noiseless.resolved()["model"]
    assert not np.allclose(positions[:, 0, -1], positions[:, 1, -1])  # κ changes the path


# The fingerprints of the shipped sweeps before `model.noise` existed (computed on main at
# 3606ca9 with `fingerprint(load_config(path).numerics())`): a new optional section must not
# change them, or every stored run would stop resuming.
FINGERPRINTS = {
    "causal_circle": "7356053121afe2fb5d5630f9588a43d2b7698f220c49a1f307f32187f8dd60a8",
    "figure3": "48e6b75e856894296bdd5c44b725a8780be17029ca17c2d373ecc76ef0af9f87",
    "figure4_phase": "8fe793ecb0e0c05ef48c923ae6b858b8a93e1e3ed5b0ee405ff6b9f895f81810",
    "figure4_trajectories": "fa3a097d5d20cc12ab3a440fd92d243bca6d27d72b2bd3fab13b1d79707d251c",
    "figure5": "94a341b96f3d691416aee1ea69a4ef7edbbb8615e99edf5a52876e19f731a56d",
    "metastability": "1541cdf10f3c6a26970237d92c12c460b7ea377481d9afee37e325b297f2c1a1",
    "normalization_placements": "22556b1fd5583d8d11736e24e1edaa4674c78abbafd6697b8e301a7d3015439f",
    "sphere": "18856ccf6d4565d880822bde28a6ae2497dae25166a910b5e01ffc95d6655ce4",
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_existing_sweeps_keep_their_fingerprints(name):
    config = load_config(f"configs/{name}.yaml")
    assert fingerprint(config.numerics()) == FINGERPRINTS[name]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"solver": {"name": "tsit5"}}, "needs an SDE solver"),
        ({"model": {**NOISY["model"], "noise": None}}, "is an SDE solver of noisy sweeps"),
        ({"model": {**NOISY["model"], "noise": {"kind": "independent", "kappa": 3.0}}}, "not both"),
        ({"sweep": {**NOISY["sweep"], "params": {}}}, "got neither"),
        ({"model": {**NOISY["model"], "noise": {"kind": "common", "kappa": 3.0}}}, "no parameter"),
        ({"sweep": {**NOISY["sweep"], "params": {"kappa": [0.0]}}}, "must be > 0"),
        (
            {"model": {"field": "Kuramoto", "n": 4, "d": 2, "noise": {"kind": "independent"}}},
            "moves angles",
        ),
        ({"model": {**NOISY["model"], "placement": "pre_ln"}}, "noise is defined on the sphere"),
    ],
)
def test_noisy_configs_refuse_what_they_cannot_run(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**NOISY, **change})


def test_shipped_noisy_config_reads_and_smokes():
    config = load_config("configs/noise_order_parameter.yaml", smoke=True)
    assert config.model.noise.kind == "independent"
    assert config.sweep.params["kappa"] == [2.4, 4.0]
    full = load_config("configs/noise_order_parameter.yaml")
    assert full.sweep.params["kappa"] == pytest.approx(np.linspace(2.4, 4.0, 5).tolist())
    # Above the threshold κ_c = β I_0(β)/I_1(β) at every κ of the sweep (a clustered branch).
    threshold = tf.theory.noise_threshold(beta=1.0, d=2, model="SA")
    assert min(full.sweep.params["kappa"]) > threshold


# --- random deep transformers (issue 19) ---------------------------------------------------

TRANSFORMER = {
    "model": {
        "field": "SA",
        "n": 4,
        "d": 4,
        "weights": "random_transformer",
        "heads": 2,
        "layers": 3,
        "weights_params": {"alpha_L": 0.5, "beta0": 0.7},
    },
    "sweep": {"beta": [1.0], "starts": 2, "seed": 3, "params": {"alpha_A": [0.5, 1.0]}},
    "time": {"t1": 1.0, "num": 4},
    "solver": {"name": "residual_layers", "dt": 1 / 3},
    "observables": {
        "names": ["positions", "head_logit_variance", "token_kernel", "mean_cosine"],
    },
}


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    config = config_from_dict(TRANSFORMER)
    return config, run_sweep(config, tmp_path_factory.mktemp("transformer"), progress=False)


def _limits_network(start, alpha_A):
    """The sweep's draw of start `start` as `tf.limits` weights: the program's keys (weight
    key, then one key per (layer, head), then W^Q, W^K, W^V, W^O), entries N(0, 1) in
    float32."""
    layers, heads, d = 3, 2, 4
    head_dim = d // heads
    start_key = jax.random.fold_in(jax.random.key(3), start)  # start may be traced
    init_key, weight_key = jax.random.split(start_key)
    keys = jax.random.split(weight_key, layers * heads).reshape(layers, heads)

    def draw(key):
        kq, kk, kv, ko = jax.random.split(key, 4)
        normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)  # noqa: E731
        return (
            normal(kq, (head_dim, d)),
            normal(kk, (head_dim, d)),
            normal(kv, (head_dim, d)),
            normal(ko, (d, head_dim)),
        )

    query, key, value, output = (w.astype(jnp.float64) for w in jax.vmap(jax.vmap(draw))(keys))
    weights = tf.limits.TransformerWeights(query, key, value, output, alpha_A=alpha_A)
    network = tf.limits.PostLNTransformer(weights=weights, beta0=0.7, alpha_L=0.5)
    x0 = tf.normalize(tf.sample_sphere(init_key, 4, d, dtype=jnp.float32).astype(jnp.float64))
    return network, x0


def test_random_transformer_sweep_is_the_limits_network(transformer_run):
    """Each start of the sweep is the L-layer BCP network of `tf.limits` (same weights), layer
    by layer, up to the float32 rounding of the drawn (scaled) weights; its observables are
    those of `tf.limits` at the saved states."""
    config, dataset = transformer_run
    assert bool(dataset["succeeded"].all())
    part = dataset.squeeze(("n", "d", "weights", "beta"))
    saved = jnp.asarray(part["positions"].values)  # (start, alpha_A, time, particle, component)

    def reference(start, alpha_A, saved_states):
        network, x0 = _limits_network(start, alpha_A)

        def variance(x):
            logits = jax.vmap(network.weights.logits, in_axes=(0, None))(jnp.arange(3), x)
            return jnp.mean(jax.vmap(tf.limits.across_head_variance)(logits))

        return network.layer_states(x0), jax.vmap(variance)(saved_states)

    # Start 1 (a folded key) at both α_A (one compiled reference each: α_A is static there).
    saved = saved[1]
    states, variance = (
        jnp.stack(parts)
        for parts in zip(
            *(
                jax.jit(reference, static_argnums=1)(1, a, saved[i])
                for i, a in enumerate((0.5, 1.0))
            ),
            strict=True,
        )
    )
    part = part.isel(start=1)
    # float32 weights: products rounded at ~6e-8, amplified by at most L = 3 layers.
    np.testing.assert_allclose(saved, states, rtol=0, atol=2e-6)
    assert not np.allclose(states[..., -1, :, :], states[..., 0, :, :], atol=1e-2)  # x moved
    np.testing.assert_allclose(
        part["token_kernel"].values, tf.limits.token_kernel(saved), atol=1e-12
    )
    np.testing.assert_allclose(
        part["mean_cosine"].values,
        jax.vmap(jax.vmap(tf.limits.mean_offdiagonal_cosine))(saved),
        atol=1e-12,
    )
    # The across-head variance of the logits, averaged over the layers and pairs.
    np.testing.assert_allclose(part["head_logit_variance"].values, variance, rtol=1e-5)


def test_random_transformer_configs_refuse_what_they_cannot_draw():
    model = TRANSFORMER["model"]
    cases = [
        ({"model": {**model, "d": 5}}, "multiple of model.heads = 2"),
        ({"time": {"t1": 2.0, "num": 3}}, "t1 must be 1"),
        ({"model": {**model, "weights_params": {"alpha_A": 0.5}}}, "also fixed under"),
        ({"model": {**model, "weights_params": {"gamma": 1.0}}}, "weights_params.gamma"),
        ({"model": {**model, "weights_params": {"beta0": -1.0}}}, "greater than 0"),
        ({"sweep": {**TRANSFORMER["sweep"], "params": {"alpha_A": [0.0]}}}, "alpha_A"),
        ({"model": {**model, "heads": None}}, "model.heads >= 2"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({**TRANSFORMER, **change})


def test_shipped_limits_config_reads():
    config = load_config("configs/limits_init.yaml", smoke=True)
    assert config.model.weights == ["random_transformer"]
    assert config.sweep.params["alpha_A"] == [0.5, 1.0]


# --- Kuramoto interactions by name (issue 23) ----------------------------------------------

THETA = jnp.array([0.3, -1.2, 2.0, 2.9, -2.5])


def _known_velocity(name, beta):
    """θ̇_i = (1/n) Σ_j h(θ_j − θ_i) of a registered h, from the closed forms."""
    u = THETA[None, :] - THETA[:, None]
    return {
        # (7.1): Kuramoto's own USA form (normalized=False) is h = e^{β cos u} sin u.
        "attention": tf.Kuramoto(beta)(0.0, THETA),
        # The classical model (7.2) is the β = 0 attention form.
        "sine": tf.Kuramoto(0.0)(0.0, THETA),
        "second_harmonic": jnp.mean(jnp.sin(2 * u), axis=1),
    }[name]


@pytest.mark.parametrize("name", INTERACTIONS.names())
def test_interaction_contract(name):
    entry = INTERACTIONS[name]
    assert entry.description
    for beta in (0.0, 1.5):
        velocity = tf.Kuramoto(beta, interaction=entry.function)(0.0, THETA)
        np.testing.assert_allclose(velocity, _known_velocity(name, beta), rtol=1e-12, atol=1e-14)
    # Positive control: at β = 1.5 every other interaction moves the oscillators otherwise.
    for other in INTERACTIONS.names():
        if other != name:
            assert not np.allclose(velocity, _known_velocity(other, 1.5), atol=1e-3)


def test_kuramoto_interaction_by_name_in_a_sweep(tmp_path):
    raw = {
        "model": {
            "field": "Kuramoto",
            "n": 6,
            "d": 2,
            "params": {"interaction": "second_harmonic"},
        },
        "sweep": {"beta": [1.0], "starts": 1, "seed": 2},
        "time": {"t1": 1.0, "num": 3},
        "solver": {"name": "rk4", "dt": 0.1},
        "observables": {"names": ["positions"]},
    }
    config = config_from_dict(raw)
    assert config.resolved()["model"]["params"] == {"interaction": "second_harmonic"}
    dataset = run_sweep(config, tmp_path, progress=False)
    key = jax.random.split(jax.random.fold_in(jax.random.key(2), 0))[0]
    x0 = tf.normalize(tf.sample_sphere(key, 6, 2, dtype=jnp.float32).astype(jnp.float64))
    field = tf.Kuramoto(1.0, interaction=INTERACTIONS["second_harmonic"].function)
    theta = tf.solve(
        field,
        tf.points_to_angles(x0),
        jnp.asarray(config.times),
        solver=SOLVERS["rk4"].make(),
        dt0=0.1,
    )
    np.testing.assert_allclose(
        dataset["positions"].values.squeeze(), tf.angles_to_points(theta.xs), rtol=0, atol=1e-6
    )  # (measured: 8e-8; another interaction differs by O(0.1))
    with pytest.raises(ConfigError, match="unknown Kuramoto interaction 'cosine'.*second_harmonic"):
        config_from_dict({**raw, "model": {**raw["model"], "params": {"interaction": "cosine"}}})
    with pytest.raises(ConfigError, match="normalized=False"):
        config_from_dict(
            {
                **raw,
                "model": {**raw["model"], "params": {"interaction": "sine", "normalized": True}},
            }
        )


# --- β-free fields: hardmax attention (issue 23) -------------------------------------------

HARDMAX = {
    "model": {
        "field": "Hardmax",
        "n": 5,
        "d": 3,
        "weights": ["identity", "ginibre:ginibre"],
        "params": {"tie_tolerance": 1e-9},
    },
    "sweep": {"starts": 2, "seed": 4},
    "time": {"t1": 1.0, "num": 3},
    "solver": {"name": "residual_layers", "dt": 0.125},
    "observables": {"names": ["positions", "mean_radius"]},
}


@pytest.fixture(scope="module")
def hardmax_run(tmp_path_factory):
    config = config_from_dict(HARDMAX)
    return config, run_sweep(config, tmp_path_factory.mktemp("hardmax"), progress=False)


def test_hardmax_sweep_is_the_hardmax_transformer(hardmax_run):
    """Each (ensemble, start) is `solve(HardmaxAttention(Q, K, V), x0)` with the sweep's draws;
    with Q = K = V = I and unit tokens every token attends to itself only (<x_i, x_j> < 1 =
    |x_i|² for j ≠ i), so the exact solution is x(t) = x(0)."""
    config, dataset = hardmax_run
    assert config.sweep.beta is None and "beta" not in config.resolved()["sweep"]
    assert dataset["beta"].values.tolist() == [np.inf]  # the β → ∞ limit
    positions = dataset["positions"].squeeze(("n", "d", "beta")).values
    assert positions.shape == (2, 2, 3, 5, 3)  # weights, start, time, particle, component
    assert bool(dataset["succeeded"].all())
    ts = jnp.asarray(config.times)
    # The program's draw, jitted like the sweep (eager float32 rounds differently, 3e-8).
    draw = jax.jit(lambda key: tf.sample_sphere(key, 5, 3, dtype=jnp.float32))
    weights = jax.jit(
        lambda key: tf.random_weights(
            key, 3, query_key="ginibre", value="ginibre", dtype=jnp.float32
        )
    )
    for start in range(2):
        init_key, weight_key = jax.random.split(jax.random.fold_in(jax.random.key(4), start))
        x0 = tf.normalize(draw(init_key).astype(jnp.float64))
        np.testing.assert_allclose(
            positions[0, start], np.broadcast_to(x0, (3, 5, 3)), rtol=0, atol=1e-15
        )
        Q, K, V = (w.astype(jnp.float64) for w in weights(weight_key))
        expected = tf.solve(
            tf.HardmaxAttention(Q, K, V, tie_tolerance=1e-9),
            x0,
            ts,
            solver=SOLVERS["residual_layers"].make(),
            dt0=0.125,
        ).xs
        # States in R^d: observables see the directions x_i/|x_i|, mean_radius the norms.
        np.testing.assert_allclose(positions[1, start], tf.normalize(expected), rtol=0, atol=1e-12)
        radius = np.linalg.norm(expected, axis=-1).mean(-1)
        np.testing.assert_allclose(
            dataset["mean_radius"].squeeze(("n", "d", "beta")).values[1, start], radius, atol=1e-12
        )
        # Positive control: random weights move the tokens, off the sphere too.
        assert np.abs(radius[-1] - 1) > 1e-2
        assert np.abs(positions[1, start, -1] - positions[1, start, 0]).max() > 1e-2
    np.testing.assert_allclose(dataset["mean_radius"].values.squeeze()[0], 1.0, atol=1e-15)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sweep": {**HARDMAX["sweep"], "beta": [1.0]}}, "is β-free.*remove sweep.beta"),
        ({"observables": {"names": ["energy"]}}, r"\['energy'\] read β"),
        ({"solver": {"name": "normalized_euler", "dt": 0.1}}, "moves tokens in R\\^d"),
        ({"model": {**HARDMAX["model"], "placement": "pre_ln"}}, "wrap a sphere field"),
        ({"model": {**HARDMAX["model"], "heads": 2}}, "refuses weights stacked"),
        ({"model": {**HARDMAX["model"], "params": {"tie_tolerance": -1.0}}}, "tie_tolerance"),
        (
            {
                "model": {**HARDMAX["model"], "noise": {"kind": "independent", "kappa": 1.0}},
                "solver": {"name": "heun", "dt": 0.1},
            },
            "noise is defined on the sphere",
        ),
        ({"model": {**HARDMAX["model"], "field": "SA", "params": {}}}, "takes β: give sweep.beta"),
    ],
)
def test_beta_free_configs_refuse_what_they_cannot_run(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**HARDMAX, **change})


def test_beta_free_entries_have_no_beta():
    from transformer_flows.experiment import FIELDS, FieldEntry

    assert FIELDS["Hardmax"].beta_free and FIELDS["Hardmax"].euclidean
    assert "beta" not in FIELDS["Hardmax"].parameters()
    with pytest.raises(ValueError, match="has a parameter `beta`"):
        FieldEntry(tf.SelfAttention, beta_free=True)


# --- Transformer blocks: attention + feed-forward (issue 23) -------------------------------

BLOCK = {
    "model": {
        "field": "SA",
        "n": 4,
        "d": 5,  # d > n: without the term the sweep would solve in span{x_i(0)}
        "feed_forward": {"width": 6, "activation": "tanh", "init_scale": 2.0},
    },
    "sweep": {"beta": [0.5, 2.0], "starts": 2, "seed": 6},
    "time": {"t1": 1.0, "num": 3},
    "solver": {"name": "rk4", "dt": 0.1},
    "observables": {"names": ["positions"]},
}


def test_transformer_block_sweep_is_the_block_per_start(tmp_path):
    """Each (β, start) is `solve(TransformerBlock(SelfAttention(β), FeedForward(w, a, b)))`,
    the feed-forward weights drawn from fold_in(start key, FEED_FORWARD_STREAM) (a, b ~ N(0, 1),
    w ~ N(0, init_scale²/m)), the starts those of the sweep without the term."""
    from transformer_flows.experiment._program import FEED_FORWARD_STREAM

    config = config_from_dict(BLOCK)
    assert config.resolved()["model"]["feed_forward"]["width"] == 6
    assert (
        "feed_forward"
        not in config_from_dict(
            {**BLOCK, "model": {**BLOCK["model"], "feed_forward": None}}
        ).resolved()["model"]
    )
    dataset = run_sweep(config, tmp_path, progress=False)
    positions = dataset["positions"].squeeze(("n", "d", "weights")).values
    assert positions.shape == (2, 2, 3, 4, 5)  # beta, start, time, particle, component
    draw = jax.jit(lambda key: tf.sample_sphere(key, 4, 5, dtype=jnp.float32))

    @jax.jit
    def weights(key):
        w_key, a_key, b_key = jax.random.split(key, 3)
        normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)  # noqa: E731
        scale = float(2.0 / np.sqrt(6))
        return scale * normal(w_key, (5, 6)), normal(a_key, (6, 5)), normal(b_key, (6,))

    @jax.jit
    def block_and_alone(beta, x0, w, a, b):
        ff = tf.FeedForward(w, a, b, activation="tanh")
        ts = jnp.asarray(config.times)
        return tuple(
            tf.solve(field, x0, ts, solver=SOLVERS["rk4"].make(), dt0=0.1).xs
            for field in (
                tf.TransformerBlock(tf.SelfAttention(beta=beta), ff),
                tf.SelfAttention(beta=beta),
            )
        )

    for start in range(2):
        start_key = jax.random.fold_in(jax.random.key(6), start)
        x0 = tf.normalize(draw(jax.random.split(start_key)[0]).astype(jnp.float64))
        ff_key = jax.random.fold_in(start_key, FEED_FORWARD_STREAM)
        w, a, b = (v.astype(jnp.float64) for v in weights(ff_key))
        for i, beta in enumerate((0.5, 2.0)):
            expected, alone = block_and_alone(jnp.float64(beta), x0, w, a, b)
            np.testing.assert_allclose(positions[i, start], expected, rtol=0, atol=1e-12)
            # Positive control: the term moves the tokens away from attention alone.
            assert np.abs(expected[-1] - alone[-1]).max() > 1e-2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {**BLOCK["model"], "placement": "pre_ln"}}, "Post-LN ODEs only"),
        ({"model": {**BLOCK["model"], "field": "Kuramoto", "d": 2}}, "moves angles"),
        (
            {"model": {**BLOCK["model"], "feed_forward": {"activation": "softplus"}}},
            "unknown activation 'softplus'",
        ),
        ({"model": {**BLOCK["model"], "feed_forward": {"width": 0}}}, "feed_forward.width"),
    ],
)
def test_transformer_block_configs_refuse_what_they_cannot_run(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**BLOCK, **change})

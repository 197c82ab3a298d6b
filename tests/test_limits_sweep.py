"""Heads H and depth L as shape axes of a simulation sweep (issue 19, docs/limits.md): each
(H, L) is its own compiled program, the dataset gains coordinates `heads` and `layers`, and
`residual_layers` with `solver.dt: null` steps one layer, t1/L, per depth. A combined sweep
equals the single-value sweeps bitwise and `tf.limits.random_transformer`'s network to float32
rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_limits import numpy_network

import transformer_flows as tf
from transformer_flows.experiment import ConfigError, config_from_dict, load_config, run_sweep
from transformer_flows.experiment._plan import plan_sweep

SEED, N_TOKENS, D, BETA0, ALPHA_A, ALPHA_L = 5, 3, 4, 0.8, 0.5, 0.5

DEPTH_SWEEP = {
    "model": {
        "field": "SA",
        "n": N_TOKENS,
        "d": D,
        "weights": "random_transformer",
        "heads": [1, 2],
        "layers": [1, 2],
        "weights_params": {"alpha_A": ALPHA_A, "alpha_L": ALPHA_L, "beta0": BETA0},
    },
    "sweep": {"beta": [1.0], "starts": 2, "seed": SEED},
    "time": {"t1": 1.0, "num": 2},
    "solver": {"name": "residual_layers", "dt": None},
    "observables": {"names": ["positions", "mean_cosine"]},
}


def _with(heads, layers):
    return {**DEPTH_SWEEP, "model": {**DEPTH_SWEEP["model"], "heads": heads, "layers": layers}}


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    config = config_from_dict(DEPTH_SWEEP)
    return run_sweep(config, tmp_path_factory.mktemp("combined"), progress=False)


def test_heads_and_layers_are_shape_axes():
    plan = plan_sweep(config_from_dict(DEPTH_SWEEP))
    assert sorted((s.heads, s.layers) for s in plan.shapes) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert len({s.label for s in plan.shapes}) == 4  # one chunk directory each
    # One H and one L save as numbers: configs from before the axes keep their fingerprint.
    single = config_from_dict(_with(2, 2)).model.model_dump()
    assert single["heads"] == 2 and single["layers"] == 2


def _limits_network(start, heads, layers):
    """The sweep's draw of `start` at (H, L) as `tf.limits` weights (the network of
    `tf.limits.random_transformer`, written out in float64 numpy by `numpy_network`): the
    program's keys (weight key, then one key per (layer, head), then W^Q, W^K, W^V, W^O),
    N(0, 1) in float32, and its start on the sphere."""
    head_dim = D // heads
    start_key = jax.random.fold_in(jax.random.key(SEED), start)
    init_key, weight_key = jax.random.split(start_key)
    keys = jax.random.split(weight_key, layers * heads).reshape(layers, heads)

    def draw(key):  # the ensemble's draw, eagerly (no compile per (H, L))
        kq, kk, kv, ko = jax.random.split(key, 4)
        shapes = ((head_dim, D), (head_dim, D), (head_dim, D), (D, head_dim))
        return [
            np.asarray(jax.random.normal(k, s, jnp.float32), np.float64)
            for k, s in zip((kq, kk, kv, ko), shapes, strict=True)
        ]

    drawn = [[draw(keys[layer, head]) for head in range(heads)] for layer in range(layers)]
    weights = (jnp.asarray(np.array([[w[i] for w in row] for row in drawn])) for i in range(4))
    weights = tf.limits.TransformerWeights(*weights, alpha_A=ALPHA_A)
    x0 = tf.sample_sphere(init_key, N_TOKENS, D, dtype=jnp.float32).astype(jnp.float64)
    return weights, tf.normalize(x0)


def test_combined_sweep_is_the_network_per_shape(combined):
    """Every (H, L, start) of the combined sweep is the L-layer network of `tf.limits` with
    the same weights, to the float32 rounding of the drawn weights (amplified by L <= 2)."""
    assert bool(combined["succeeded"].all())
    assert list(combined["heads"].values) == [1, 2]
    assert list(combined["layers"].values) == [1, 2]
    for heads in (1, 2):
        for layers in (1, 2):
            part = combined.sel(heads=heads, layers=layers).squeeze(("n", "d", "weights", "beta"))
            for start in (0, 1):
                weights, x0 = _limits_network(start, heads, layers)
                saved = part["positions"].isel(start=start).values  # (time, particle, component)
                np.testing.assert_allclose(saved[0], x0, atol=1e-7)
                final = numpy_network(weights, x0, BETA0, ALPHA_L, "post")
                np.testing.assert_allclose(saved[-1], final, atol=2e-6)
                assert not np.allclose(saved[-1], saved[0], atol=1e-2)  # the layers moved x


@pytest.mark.parametrize("heads, layers", [(1, 2), (2, 1)])
def test_combined_sweep_equals_single_value_sweeps_bitwise(combined, tmp_path, heads, layers):
    """A single (H, L) sweep runs the program of that shape of the combined sweep (the
    program cache keys on the shape, so it is not compiled again) with the same keys: its
    dataset is the combined one's slice, bit for bit."""
    single = run_sweep(config_from_dict(_with(heads, layers)), tmp_path, progress=False)
    assert int(single["heads"]) == heads and int(single["layers"]) == layers  # scalar coords
    assert "heads" not in single.dims and "layers" not in single.dims
    part = combined.sel(heads=heads, layers=layers)
    for name in ("positions", "mean_cosine"):
        np.testing.assert_array_equal(single[name].values, part[name].values)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"solver": {"name": "residual_layers", "dt": 0.5}}, r"solver.dt = 0.5.*L = \[1\].*null"),
        (
            {"solver": {"name": "residual_layers", "dt": None}, "model": {"layers": None}},
            "null means one step per layer",
        ),
        ({"model": {"heads": [1, 3]}}, "multiple of model.heads = 3"),
        ({"model": {"layers": [2, 2]}}, "layers"),
        ({"sweep": {"params": {"layers": [1, 2]}}}, "params.layers"),
    ],
)
def test_layer_axes_refuse_inconsistent_input(change, message):
    raw = {
        **DEPTH_SWEEP,
        **{key: {**DEPTH_SWEEP[key], **value} for key, value in change.items()},
    }
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_one_depth_with_its_step_is_accepted():
    config = config_from_dict(
        {**_with([1, 2], 4), "solver": {"name": "residual_layers", "dt": 0.25}}
    )
    assert config.model.layers == [4]


def test_shipped_depth_config_reads():
    config = load_config("configs/limits_depth.yaml", smoke=True)
    assert len(config.model.layers) >= 2
    assert config.solver.dt is None and config.solver.name == "residual_layers"
    assert config.sweep.params["alpha_L"] == [0.5, 1.0]


def test_depth_variance_figure_needs_several_depths_at_validation():
    """The figure draws the variance against L: a config with one depth (or none) is refused
    when it is validated, naming model.layers, the value and the fix, not when it is drawn."""
    raw = {**_with(1, [1, 2]), "figures": ["depth_variance"]}
    config_from_dict(raw)  # two depths: accepted
    for layers, got in ((4, "4"), ([4], "4"), (None, "None")):
        bad = {**raw, "model": {**raw["model"], "layers": layers}}
        if layers is None:
            bad["solver"] = {"name": "residual_layers", "dt": 0.5}
        with pytest.raises(
            ConfigError, match=rf"depth_variance.*model\.layers = {got}.*model\.layers=\["
        ):
            config_from_dict(bad)

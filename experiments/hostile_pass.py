"""A hostile pass over public functions and config keys (issue 20): NaN, inf, negative, zero,
empty, huge, wrong dtype and wrong shape values. Each case is classified:

- clear: refused with ValueError/TypeError (or ConfigError, EquinoxRuntimeError) whose message
  names the argument or key;
- unhelpful: refused, but the message does not name the argument (or an internal error type);
- silent: returned a value that is non-finite or otherwise not a valid answer;
- crash: an unexpected exception type (AttributeError, IndexError, ZeroDivisionError, ...).
- ok: a valid input accepted with a valid answer (e.g. beta = 0 is a valid field).

    PYTHONPATH=. python experiments/hostile_pass.py            (prints a table, ~2 min CPU)
"""

import collections
import math
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import transformer_flows as tf  # noqa: E402
from transformer_flows import theory  # noqa: E402
from transformer_flows.experiment import ConfigError, config_from_dict  # noqa: E402

HOSTILE = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "negative": -1.0,
    "zero": 0.0,
    "huge": 1e308,
    "string": "a",
    "empty list": [],
    "bool": True,
    "shape (2,)": [1.0, 2.0],
}
results = []


def finite(value) -> bool:
    leaves = jax.tree_util.tree_leaves(value)
    return all(
        bool(np.all(np.isfinite(np.asarray(leaf))))
        for leaf in leaves
        if np.asarray(leaf).dtype.kind in "fc"
    )


def attempt(where, label, argument, call, valid=None):
    """valid: a predicate on the returned value (None: finite means ok)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = call()
    except (ValueError, TypeError, ConfigError, eqx.EquinoxRuntimeError) as err:
        text = str(err)
        named = argument.lower() in text.lower()
        kind = "clear" if named else "unhelpful"
        results.append((where, label, kind, f"{type(err).__name__}: {text[:110]!r}"))
        return
    except Exception as err:  # noqa: BLE001
        results.append((where, label, "crash", f"{type(err).__name__}: {str(err)[:110]!r}"))
        return
    good = valid(value) if valid is not None else finite(value)
    results.append((where, label, "ok" if good else "silent", "returned"))


x0 = tf.normalize(jax.random.normal(jax.random.key(0), (4, 2)))
ts = jnp.linspace(0.0, 1.0, 3)

# Fields: beta, and the constructor's other scalars.
for cls in (tf.SelfAttention, tf.UnnormalizedSelfAttention, tf.Kuramoto):
    for label, value in HOSTILE.items():
        attempt(
            cls.__name__,
            f"beta={label}",
            "beta",
            lambda: cls(value)(0.0, x0 if cls is not tf.Kuramoto else jnp.zeros(4)),
            valid=lambda v, label=label: (
                finite(v) and label in ("zero", "negative", "bool", "huge")
            ),
        )

# solve: options.
options = {
    "dt0": dict(solver=tf.NormalizedEuler()),
    "rtol": {},
    "atol": {},
    "max_steps": {},
}
for name, extra in options.items():
    for label, value in HOSTILE.items():
        if name == "max_steps" and label in ("huge",):
            continue
        kwargs = {**extra, name: value}
        if name == "dt0" and label == "huge":
            kwargs["dt0"] = 1e308
        attempt(
            "solve",
            f"{name}={label}",
            name,
            lambda kwargs=kwargs: tf.solve(tf.SelfAttention(1.0), x0, ts, **kwargs).xs,
            valid=lambda v: finite(v),
        )

for label, value in {
    "x0 empty (0, 2)": jnp.zeros((0, 2)),
    "x0 nan": x0.at[0, 0].set(jnp.nan),
    "x0 off sphere": 2 * x0,
    "x0 int": np.ones((4, 2), dtype=np.int32),
    "x0 shape (4,)": x0[:, 0],
    "x0 string": "abc",
    "x0 complex": x0.astype(jnp.complex64),
}.items():
    attempt("solve", label, "x0", lambda value=value: tf.solve(tf.SelfAttention(1.0), value, ts).xs)
for label, value in {
    "ts empty": jnp.zeros((0,)),
    "ts nan": ts.at[1].set(jnp.nan),
    "ts decreasing": ts[::-1],
    "ts 2-d": ts[None],
    "ts repeated": jnp.asarray([0.0, 0.0, 1.0]),
}.items():
    attempt("solve", label, "ts", lambda value=value: tf.solve(tf.SelfAttention(1.0), x0, value).xs)

# Observables.
for fn, argument in (
    (lambda d: tf.count_clusters(x0, d), "delta"),
    (lambda d: tf.clustered_fraction(x0, d), "delta"),
    (lambda d: tf.cluster_labels(x0, d), "delta"),
):
    for label in ("nan", "inf", "negative", "zero", "huge", "string"):
        attempt(
            "observables",
            f"{argument}={label}",
            argument,
            lambda fn=fn, label=label: fn(HOSTILE[label]),
            valid=lambda v, label=label: finite(v) and label in ("zero", "huge", "inf"),
        )
for name in ("mean_cosine", "order_parameter", "mean_radius", "gram"):
    fn = getattr(tf, name)
    for label, value in {
        "nan x": x0.at[0, 0].set(jnp.nan),
        "empty x": jnp.zeros((0, 2)),
        "x 1-d": x0[:, 0],
    }.items():
        attempt(name, label, "x", lambda fn=fn, value=value: fn(value))

# Sampling and sphere helpers.
for label, (n, d) in {
    "n=0": (0, 2),
    "n=-1": (-1, 2),
    "d=0": (4, 0),
    "d=1": (4, 1),
    "n=1.5": (1.5, 2),
}.items():
    attempt(
        "sample_sphere",
        label,
        label.split("=")[0],
        lambda n=n, d=d: tf.sample_sphere(jax.random.key(0), n, d),
    )
attempt("normalize", "zero vector", "x", lambda: tf.normalize(jnp.zeros((2, 3))))

# Mean field.
for label in ("nan", "inf", "negative", "zero", "huge"):
    attempt(
        "MeanFieldCircle",
        f"beta={label}",
        "beta",
        lambda label=label: tf.MeanFieldCircle(HOSTILE[label], modes=8).beta,
        valid=lambda v, label=label: label == "zero" and finite(v),
    )
    attempt(
        "MeanFieldCircle",
        f"kappa={label}",
        "kappa",
        lambda label=label: tf.MeanFieldCircle(1.0, kappa=HOSTILE[label], modes=8).beta,
        valid=lambda v, label=label: label in ("inf", "huge"),
    )
for label, value in {"modes=0": 0, "modes=-1": -1, "modes=1.5": 1.5}.items():
    attempt(
        "MeanFieldCircle",
        label,
        "modes",
        lambda value=value: tf.MeanFieldCircle(1.0, modes=value).beta,
    )

# Noise.
for cls, argument in ((tf.IndependentNoise, "kappa"), (tf.CommonNoise, "sigma")):
    for label in ("nan", "negative", "zero", "string"):
        attempt(
            cls.__name__,
            f"{argument}={label}",
            argument,
            lambda cls=cls, label=label: cls(HOSTILE[label]),
            valid=lambda v, label=label: label == "zero" and cls is tf.CommonNoise,
        )

# Theory.
for fn, args, argument in (
    (theory.growth_rate, lambda v: (1, v, 2, "SA"), "beta"),
    (theory.growth_rate, lambda v: (v, 1.0, 2, "SA"), "ell"),
    (theory.phase_boundary, lambda v: (v,), "t"),
):
    for label in ("nan", "inf", "negative", "string"):
        attempt(
            f"theory.{fn.__name__}",
            f"{argument}={label}",
            argument,
            lambda fn=fn, args=args, label=label: fn(*args(HOSTILE[label])),
            valid=lambda v, label=label: finite(v) and label == "negative",
        )

# Config keys, as overrides of a small sweep config.
RAW = {
    "model": {"n": 4, "d": 2},
    "sweep": {"beta": [0.5, 4.0], "starts": 2},
    "time": {"t1": 2.0, "num": 3},
}
KEYS = [
    "model.n",
    "model.d",
    "model.heads",
    "model.layers",
    "sweep.beta",
    "sweep.starts",
    "sweep.seed",
    "sweep.chunk_size",
    "sweep.memory_budget_mb",
    "sweep.tolerance",
    "time.t1",
    "time.num",
    "solver.rtol",
    "solver.atol",
    "solver.max_steps",
    "observables.delta",
    "observables.harmonic",
    "plot.movie_frames",
    "plot.snapshot_times",
    "plot.example_start",
    "precision",
    "name",
]
VALUES = {
    "nan": ".nan",
    "inf": ".inf",
    "negative": "-1",
    "zero": "0",
    "huge": "1e308",
    "empty": "[]",
    "string": "abc",
    "bool": "true",
    "shape": "[[1, 2]]",
    "null": "null",
}
for key in KEYS:
    for label, text in VALUES.items():

        def build(key=key, text=text):
            return config_from_dict(RAW, [f"{key}={text}"])

        def acceptable(config, key=key, label=label):
            # A value accepted must be one the key allows.
            value = config.model_dump()
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            values = value if isinstance(value, list) else [value]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if any(not math.isfinite(v) for v in numbers):
                return False
            if label == "huge" and any(abs(v) > 1e300 for v in numbers):
                return key in (
                    "sweep.beta",
                    "time.t1",
                    "sweep.memory_budget_mb",
                    "solver.rtol",
                    "solver.atol",
                    "observables.delta",
                    "plot.snapshot_times",
                    "sweep.tolerance",
                )
            return True

        attempt("config", f"{key}={label}", key.split(".")[-1], build, valid=acceptable)

counts = collections.Counter(kind for *_, kind, _ in results)
for where, label, kind, note in results:
    if kind != "clear" and kind != "ok":
        print(f"{kind:9s} {where:28s} {label:28s} {note}")
print(
    f"\n{len(results)} cases: "
    + ", ".join(f"{k} {counts[k]}" for k in ("clear", "ok", "unhelpful", "silent", "crash"))
)
sys.exit(0)

"""Fitting targets: what the flow should do with random inputs, a differentiable loss on the
final tokens, and a held-out metric.

A task is unbatched (one input configuration of n tokens); `fit` vmaps it over a batch.
- `LabeledInputs`: n tokens with labels (uniform on the sphere labelled by the nearest anchor,
  or a mixture of caps around the anchors labelled by cap).
- `LabeledTargets`: label c must end near target point c (metric: nearest-target accuracy).
- `TargetPartition`: same labels merge, different labels stay below a cosine margin, with no
  prescribed locations (metric: adjusted Rand index of the final connected components).
- `TargetMeasure`: the final empirical measure matches a target measure, one target per source
  measure (measure-to-measure interpolation); loss and metric are the squared MMD.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._custom_types import Particles
from ._observables import cluster_labels
from ._sphere import normalize
from ._validation import as_float_array


def _unit_rows(value, name: str, dim: int | None = None) -> Float[Array, "c d"]:
    points = as_float_array(value, name)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(
            f"`{name}` must be points of shape (c, d) with d >= 2, got {points.shape}."
        )
    if dim is not None and points.shape[1] != dim:
        raise ValueError(f"`{name}` must have dimension d={dim}, got shape {points.shape}.")
    norms = np.linalg.norm(np.asarray(points), axis=-1)
    if np.any(norms == 0):
        raise ValueError(
            f"`{name}` has a zero row; every point must be nonzero (it is normalised)."
        )
    return normalize(points)


class LabeledInputs(eqx.Module):
    """Random input configurations of `n` tokens with a label per token.

    - `spread=None`: tokens uniform on S^{d-1}, label = index of the nearest anchor (Voronoi).
    - `spread=s > 0`: each token picks an anchor c uniformly and is normalize(a_c + s·g),
      g standard Gaussian (a cap around a_c), label = c.
    """

    anchors: Float[Array, "c d"]
    n: int = eqx.field(static=True)
    spread: float | None = eqx.field(default=None, static=True)

    def __init__(self, anchors, n: int, spread: float | None = None):
        self.anchors = _unit_rows(anchors, "anchors")
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"`n` (tokens per input) must be an integer >= 2, got {n!r}.")
        if spread is not None and not spread > 0:
            raise ValueError(f"`spread` must be > 0 (or None for uniform inputs), got {spread}.")
        self.n = n
        self.spread = None if spread is None else float(spread)

    @property
    def num_labels(self) -> int:
        return self.anchors.shape[0]

    @property
    def dim(self) -> int:
        return self.anchors.shape[1]

    def __call__(self, key: PRNGKeyArray) -> tuple[Particles, Int[Array, " n"]]:
        d = self.dim
        if self.spread is None:
            x = normalize(jax.random.normal(key, (self.n, d), dtype=self.anchors.dtype))
            return x, jnp.argmax(x @ self.anchors.T, axis=-1)
        label_key, noise_key = jax.random.split(key)
        labels = jax.random.randint(label_key, (self.n,), 0, self.num_labels)
        noise = jax.random.normal(noise_key, (self.n, d), dtype=self.anchors.dtype)
        return normalize(self.anchors[labels] + self.spread * noise), labels


class AbstractTask(eqx.Module):
    """A fitting target. `sample(key) -> (x0, aux)`; `loss(x_final, aux)` is differentiable;
    `metrics(xs_final, auxs)` (batched, numpy) gives held-out numbers, `headline` names the one
    reported as the task's held-out metric."""

    headline: eqx.AbstractClassVar[str]
    higher_is_better: eqx.AbstractClassVar[bool]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Token dimension d."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray) -> tuple[Particles, PyTree]:
        """One input configuration and what the loss needs about it (labels, target samples)."""

    @abc.abstractmethod
    def loss(self, x_final: Particles, aux: PyTree) -> Float[Array, ""]:
        """Loss of one final configuration."""

    @abc.abstractmethod
    def metrics(self, xs_final: np.ndarray, auxs: PyTree) -> dict[str, float]:
        """Held-out metrics over a batch (leading axis) of final configurations."""


class _AbstractLabeledTask(AbstractTask):
    """A task whose inputs are `LabeledInputs`: samples are their draws, aux the labels."""

    inputs: eqx.AbstractVar[LabeledInputs]

    @property
    def dim(self) -> int:
        return self.inputs.dim

    def sample(self, key):
        return self.inputs(key)


class LabeledTargets(_AbstractLabeledTask):
    """Tokens with label c should end at `targets[c]`: loss mean_i (1 - <x_i(T), t_{c_i}>)
    (half the squared chordal distance); metric: accuracy of the nearest target."""

    headline: ClassVar[str] = "heldout_accuracy"
    higher_is_better: ClassVar[bool] = True
    inputs: LabeledInputs
    targets: Float[Array, "c d"]

    def __init__(self, inputs: LabeledInputs, targets):
        self.inputs = inputs
        self.targets = _unit_rows(targets, "targets", inputs.dim)
        if self.targets.shape[0] != inputs.num_labels:
            raise ValueError(
                f"`targets` has {self.targets.shape[0]} points but the inputs have "
                f"{inputs.num_labels} labels (anchors); give one target per label."
            )

    def loss(self, x_final, labels):
        return jnp.mean(1 - jnp.sum(x_final * self.targets[labels], axis=-1))

    def metrics(self, xs_final, labels):
        return {"heldout_accuracy": nearest_target_accuracy(xs_final, labels, self.targets)}


class TargetPartition(_AbstractLabeledTask):
    """A partition without locations: same-label pairs merge (loss 1 - <x_i, x_j>), pairs with
    different labels stay below the cosine `margin` (hinge max(0, <x_i, x_j> - margin)); the two
    parts are averaged over their pairs and added. Metric: adjusted Rand index between the
    labels and the connected components of the graph {<x_i, x_j> >= 1 - delta}
    (`cluster_labels`)."""

    headline: ClassVar[str] = "heldout_ari"
    higher_is_better: ClassVar[bool] = True
    inputs: LabeledInputs
    margin: float = eqx.field(static=True)
    delta: float = eqx.field(static=True)

    def __init__(self, inputs: LabeledInputs, margin: float = 0.0, delta: float = 0.05):
        if not -1 <= margin < 1:
            raise ValueError(f"`margin` must be a cosine in [-1, 1), got {margin}.")
        if not 0 < delta < 2:
            raise ValueError(f"`delta` must be in (0, 2) (merge threshold 1 - delta), got {delta}.")
        self.inputs, self.margin, self.delta = inputs, float(margin), float(delta)

    def loss(self, x_final, labels):
        gram = x_final @ x_final.T
        same = labels[:, None] == labels[None, :]
        off_diagonal = ~jnp.eye(labels.shape[0], dtype=bool)
        merge_pairs = same & off_diagonal
        apart_pairs = ~same

        def pair_mean(values, mask):
            count = jnp.maximum(jnp.sum(mask, dtype=values.dtype), 1)
            return jnp.sum(jnp.where(mask, values, 0)) / count

        return pair_mean(1 - gram, merge_pairs) + pair_mean(
            jax.nn.relu(gram - self.margin), apart_pairs
        )

    def metrics(self, xs_final, labels):
        labels = np.asarray(labels)
        components = np.asarray(
            jax.vmap(cluster_labels, in_axes=(0, None))(jnp.asarray(xs_final), self.delta)
        )
        scores = [
            adjusted_rand_index(true, found) for true, found in zip(labels, components, strict=True)
        ]
        return {"heldout_ari": float(np.mean(scores))}


class CapMixture(eqx.Module):
    """A measure on the sphere: equal-weight mixture of caps normalize(m_c + s_c g)."""

    means: Float[Array, "c d"]
    spreads: Float[Array, " c"]

    def __init__(self, means, spreads):
        self.means = _unit_rows(means, "means")
        spreads = as_float_array(spreads, "spreads")
        self.spreads = jnp.broadcast_to(spreads, self.means.shape[:1])
        if np.any(np.asarray(self.spreads) < 0):
            raise ValueError(f"`spreads` must be >= 0, got {np.asarray(spreads)}.")

    def __call__(self, key: PRNGKeyArray, n: int) -> Particles:
        component_key, noise_key = jax.random.split(key)
        component = jax.random.randint(component_key, (n,), 0, self.means.shape[0])
        noise = jax.random.normal(noise_key, (n, self.means.shape[1]), dtype=self.means.dtype)
        return normalize(self.means[component] + self.spreads[component, None] * noise)


class TargetMeasure(AbstractTask):
    """Measure-to-measure interpolation: an input is n samples of `sources[c]` (c uniform) and
    its final empirical measure should match `targets[c]`; loss and metric are the squared
    MMD (biased V-statistic) against m fresh target samples, with the kernel on the sphere
    k(x, y) = exp(kappa (<x, y> - 1)) (a Gaussian kernel in chordal distance)."""

    headline: ClassVar[str] = "heldout_mmd2"
    higher_is_better: ClassVar[bool] = False
    sources: tuple[CapMixture, ...]
    targets: tuple[CapMixture, ...]
    n: int = eqx.field(static=True)
    num_target_samples: int = eqx.field(static=True)
    kappa: float = eqx.field(static=True)

    def __init__(
        self, sources, targets, n: int, num_target_samples: int | None = None, kappa: float = 4.0
    ):
        if len(sources) != len(targets) or not sources:
            raise ValueError(
                f"`sources` and `targets` must be nonempty and pair up, got {len(sources)} "
                f"sources and {len(targets)} targets."
            )
        dims = {m.means.shape[1] for m in (*sources, *targets)}
        if len(dims) != 1:
            raise ValueError(f"source and target measures must share one dimension d, got {dims}.")
        if not kappa > 0:
            raise ValueError(f"`kappa` (kernel concentration) must be > 0, got {kappa}.")
        self.sources, self.targets = tuple(sources), tuple(targets)
        self.n = n
        self.num_target_samples = n if num_target_samples is None else num_target_samples
        self.kappa = float(kappa)

    @property
    def dim(self) -> int:
        return self.sources[0].means.shape[1]

    def sample(self, key):
        pair_key, source_key, target_key = jax.random.split(key, 3)
        pair = jax.random.randint(pair_key, (), 0, len(self.sources))
        x0 = jax.lax.switch(pair, [lambda k, m=m: m(k, self.n) for m in self.sources], source_key)
        y = jax.lax.switch(
            pair, [lambda k, m=m: m(k, self.num_target_samples) for m in self.targets], target_key
        )
        return x0, (pair, y)

    def loss(self, x_final, aux):
        return sphere_mmd2(x_final, aux[1], self.kappa)

    def metrics(self, xs_final, auxs):
        values = jax.vmap(sphere_mmd2, in_axes=(0, 0, None))(
            jnp.asarray(xs_final), auxs[1], self.kappa
        )
        return {"heldout_mmd2": float(jnp.mean(values))}

    def noise_floor(self, key: PRNGKeyArray, num_samples: int) -> float:
        """Mean MMD² between two independent samples of the same target (what a perfect map
        would score with these sample sizes)."""

        def one(k):
            _, (pair, y) = self.sample(k)
            other = jax.lax.switch(
                pair,
                [lambda kk, m=m: m(kk, self.n) for m in self.targets],
                jax.random.fold_in(k, 1),
            )
            return sphere_mmd2(other, y, self.kappa)

        return float(jnp.mean(jax.vmap(one)(jax.random.split(key, num_samples))))


def sphere_mmd2(x: Particles, y: Particles, kappa: float) -> Float[Array, ""]:
    """Squared MMD (V-statistic) between the empirical measures of x and y on the sphere, with
    k(x, y) = exp(kappa (<x, y> - 1))."""

    def mean_kernel(a, b):
        return jnp.mean(jnp.exp(kappa * (a @ b.T - 1)))

    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def nearest_target_accuracy(xs_final, labels, targets) -> float:
    """Fraction of tokens whose nearest target (largest cosine) is the one of their label."""
    nearest = np.argmax(np.asarray(xs_final) @ np.asarray(targets).T, axis=-1)
    return float(np.mean(nearest == np.asarray(labels)))


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Hubert–Arabie adjusted Rand index of two labelings (1 = identical partitions, about 0
    for independent ones). Defined as 1 when both are the trivial one-cluster partition."""
    _, true_index = np.unique(np.asarray(labels_true), return_inverse=True)
    _, pred_index = np.unique(np.asarray(labels_pred), return_inverse=True)
    table = np.zeros((true_index.max() + 1, pred_index.max() + 1))
    np.add.at(table, (true_index, pred_index), 1)

    def pairs(counts):
        return float(np.sum(counts * (counts - 1) / 2))

    both = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = pairs(np.array([table.sum()]))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (both - expected) / (maximum - expected)

"""The exact cluster reduction: coincident tokens as one weighted particle.

Under SA and USA (and their angle forms on the circle) two tokens that coincide stay
coincident, and a set of k coincident tokens acts on every other token exactly as one token of
mass k (`masses` of the fields; docs/mathematics.md, "Token masses and the exact cluster
reduction"). `solve_reduced` uses this: it solves, merges the tokens that have come within
`tolerance` of each other into one particle of their summed mass at their mass-weighted mean
direction, and restarts with fewer particles. Each merge removes the stiff contracting mode of
that cluster, and the partition records which token is in which particle, so the trajectory
expands back to n tokens.

The merge is exact when the merged tokens coincide; for tokens at distance ε the merged state
differs from the unreduced one by O(ε²) (the mass-weighted mean is the cluster's centre to
first order), so `tolerance` trades accuracy for speed.
"""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from jaxtyping import Array, ArrayLike, Float, Int

from ._field._base import AbstractAngleField, AbstractEuclideanField, AbstractSphereField
from ._field._kuramoto import Kuramoto
from ._field._self_attention import AbstractAttentionField
from ._results import RESULTS
from ._solve import solve
from ._validation import as_float_array


class ReducedTrajectory(eqx.Module):
    """The output of `solve_reduced`.

    - `ts`: the save times, (T,).
    - `particles`: the weighted particles at each save, (T, n, d) points or (T, n) angles;
      rows at and beyond `counts[t]` repeat row 0 (padding, mass 0).
    - `masses`: the particles' masses, (T, n), 0 on padding rows.
    - `labels`: (T, n) integers, the particle row of each token at each save.
    - `counts`: (T,) the number of particles at each save.
    - `merge_times`: (M,) the save times at which a merge was made (the first save at which
      the merged tokens were within `tolerance`; the save grid is the time resolution).
    - `partitions`: (M + 1, n) the token → particle labels of the start and after each merge.
    - `stats`: summed solver statistics (`num_steps`, `num_rejected_steps`) and the number of
      `solves` (chunks of the save grid).
    - `result`: the first failure's `RESULTS` code, or `successful`; after a failure the
      remaining saves are NaN (never a number the solve did not produce).

    `expand()` gives the n-token trajectory (T, n, d) or (T, n).
    """

    ts: Float[Array, " times"]
    particles: Array
    masses: Float[Array, "times n"]
    labels: Int[Array, "times n"]
    counts: Int[Array, " times"]
    merge_times: Float[Array, " merges"]
    partitions: Int[Array, "merges_plus_one n"]
    stats: dict[str, int]
    result: RESULTS

    @property
    def succeeded(self):
        return self.result == RESULTS.successful

    def expand(self) -> Array:
        """The trajectory of all n tokens: token i sits at its particle's position."""
        rows = jnp.arange(self.ts.shape[0])[:, None]
        return self.particles[rows, self.labels]


def _distances(x: np.ndarray, angles: bool) -> np.ndarray:
    """Pairwise distances: chord |x_i - x_j| for points, the wrapped |θ_i - θ_j| for angles.
    From differences, so tiny distances are accurate (1 - <x_i, x_j> would lose them)."""
    if angles:
        return np.abs(np.angle(np.exp(1j * (x[:, None] - x[None, :]))))
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)


def merge_particles(
    x: ArrayLike,
    masses: ArrayLike | Sequence[float],
    tolerance: float | int,
    *,
    angles: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge particles within `tolerance` (distance <= tolerance; single linkage: chains
    merge) into one each.

    `x` (k, d) points on the sphere or (k,) angles, `masses` (k,). Returns (merged x,
    merged masses, labels): labels[i] is the merged row of particle i. A merged particle has
    the summed mass and the mass-weighted mean direction, renormalised (the circular mean for
    angles). Rows keep the order of each group's first member. NumPy, float64 or the input's
    dtype.
    """
    x, masses = np.asarray(x), np.asarray(masses)
    _check_tolerance(tolerance)
    if masses.shape != x.shape[:1] or not np.all(np.isfinite(masses) & (masses > 0)):
        raise ValueError(
            f"`masses` must be {x.shape[:1]} finite positive weights, one per particle of `x`, "
            f"got {masses!r}."
        )
    close = _distances(x, angles) <= tolerance
    count, groups = scipy.sparse.csgraph.connected_components(
        scipy.sparse.csr_matrix(close), directed=False
    )
    # Renumber so that the groups come in the order of their first member.
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    order = sorted(range(count), key=lambda g: first[g])
    relabel = np.empty(count, dtype=int)
    relabel[order] = np.arange(count)
    labels = relabel[groups]
    merged_masses = np.zeros(count, masses.dtype)
    np.add.at(merged_masses, labels, masses)
    points = np.stack([np.cos(x), np.sin(x)], axis=-1) if angles else x
    summed = np.zeros((count, points.shape[1]), points.dtype)
    np.add.at(summed, labels, masses[:, None] * points)
    if angles:
        mean = np.arctan2(summed[:, 1], summed[:, 0])
        # Kept next to the group's first member (not wrapped to (-π, π]): continuous angles.
        anchor = x[np.unique(labels, return_index=True)[1]]
        merged = (anchor + np.angle(np.exp(1j * (mean - anchor)))).astype(x.dtype)
    else:
        merged = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    # A particle merged with nothing keeps its state bit for bit (and its angle unwrapped).
    sizes = np.bincount(labels, minlength=count)
    alone = sizes[labels] == 1
    merged[labels[alone]] = x[alone]
    return merged, merged_masses, labels


def _check_tolerance(tolerance) -> None:
    if not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(
            f"`tolerance` must be a finite distance >= 0 (e.g. 1e-8; 0 merges only "
            f"coincident tokens), got {tolerance!r}."
        )


_NOT_OPTIONS = {
    "observe": "the reduction needs the states to find merges",
    "noise": "independent noise separates coincident tokens, so merging them is not exact",
    "key": "there is no noise to draw",
}


def _with_masses(field, masses: np.ndarray):
    return eqx.tree_at(lambda f: f.masses, field, jnp.asarray(masses), is_leaf=lambda v: v is None)


def _check_reducible(field) -> None:
    if isinstance(field, Kuramoto):
        if field.frequencies is not None:
            raise ValueError(
                "`solve_reduced` merges coincident oscillators, which stay coincident only "
                "if they have the same natural frequency; `Kuramoto(frequencies=...)` gives "
                "each its own. Pass frequencies=None, or use `solve`."
            )
        return
    if not isinstance(field, AbstractAttentionField) or not hasattr(field, "masses"):
        raise ValueError(
            f"`solve_reduced` needs a field with token masses (SelfAttention, "
            f"UnnormalizedSelfAttention or Kuramoto), got {type(field).__name__}."
        )
    if not field.mask.is_trivial and field.masses is None:
        # The mask itself refuses masses with positional options; say so before solving.
        raise ValueError(
            f"`solve_reduced` merges tokens into weighted particles, which have no single "
            f"position; the field has positional options ({field.mask}). Use `solve`."
        )


def solve_reduced(
    field: AbstractSphereField | AbstractAngleField | AbstractEuclideanField,
    x0: ArrayLike,
    ts: Float[ArrayLike, " times"] | Sequence[float],
    *,
    tolerance: float | int,
    chunk: int = 32,
    throw: bool = True,
    **solve_options,
) -> ReducedTrajectory:
    """`solve` with the exact cluster reduction: tokens within `tolerance` of each other are
    merged into one weighted particle, and the solve restarts with the merged system.

    **Arguments:**
    - `field`: `SelfAttention` or `UnnormalizedSelfAttention` (no positional mask), or
      `Kuramoto` (no natural frequencies). Its `masses` (None: all 1) are the tokens'
      starting masses.
    - `x0`, `ts`: as for `solve` ((n, d) points on the sphere or (n,) angles; increasing
      save times).
    - `tolerance`: merge distance (tokens at distance <= tolerance merge), the chord
      |x_i - x_j| for points, the angle for angles. `tolerance=0` merges only coincident
      tokens, which is exact; at distance ε the error is O(ε²).
    - `chunk`: the solve runs over `chunk` save intervals at a time and looks for merges at
      the saves; a merge is made at the first save where two particles are within
      `tolerance`, and the next solve starts there. Each particle count compiles once.
    - `throw` and `**solve_options` (`solver`, `dt0`, `rtol`, `atol`, `max_steps`, ...):
      passed to `solve` (`observe`, `noise` and `key` are refused).

    **Returns:** a `ReducedTrajectory` (`expand()` gives the n tokens).
    """
    for name, why in _NOT_OPTIONS.items():
        if name in solve_options:
            raise ValueError(f"`solve_reduced` does not take `{name}`: {why}.")
    _check_reducible(field)
    _check_tolerance(tolerance)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive number of save intervals, got {chunk!r}.")
    angles = isinstance(field, AbstractAngleField)
    x0 = np.asarray(as_float_array(x0, "x0"))
    field.check_state(jnp.asarray(x0))
    ts = np.asarray(as_float_array(ts, "ts"), dtype=x0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 1 or np.any(np.diff(ts) <= 0) or not np.all(np.isfinite(ts)):
        raise ValueError(f"`ts` must be a 1-d array of finite increasing save times, got {ts!r}.")
    n = x0.shape[0]
    start = np.ones(n, x0.dtype) if field.masses is None else np.asarray(field.masses)
    x, masses, tokens = merge_particles(x0, start.astype(x0.dtype), tolerance, angles=angles)
    partitions, merge_times = [tokens], []
    if len(masses) < n:
        merge_times.append(ts[0])
    saves = [(x, masses, tokens)]
    stats = {"num_steps": 0, "num_rejected_steps": 0, "solves": 0}
    result = RESULTS.successful
    k = 0
    while k < len(ts) - 1:
        end = min(k + chunk, len(ts) - 1)
        # Before any merge a field without masses is solved as given: the same program (and
        # numbers) as `solve`.
        unmerged = field.masses is None and len(masses) == n
        reduced = field if unmerged else _with_masses(field, masses)
        trajectory = solve(
            reduced,
            jnp.asarray(x),
            ts[k : end + 1],
            throw=throw,
            **solve_options,
        )
        stats["solves"] += 1
        for name in ("num_steps", "num_rejected_steps"):
            stats[name] += int(trajectory.stats[name])
        if not bool(trajectory.succeeded):
            result = trajectory.result
            break
        xs = np.asarray(trajectory.xs)
        merged_at = None
        for j in range(1, end - k + 1):
            distances = _distances(xs[j], angles)
            np.fill_diagonal(distances, np.inf)
            if np.min(distances, initial=np.inf) <= tolerance:
                merged_at = j
                break
            saves.append((xs[j], masses, tokens))
        if merged_at is None:
            x, k = xs[-1], end
            continue
        x, masses, labels = merge_particles(xs[merged_at], masses, tolerance, angles=angles)
        tokens = labels[tokens]
        partitions.append(tokens)
        merge_times.append(ts[k + merged_at])
        saves.append((x, masses, tokens))
        k += merged_at
    return _assemble(ts, saves, n, merge_times, partitions, stats, result)


def _assemble(ts, saves, n, merge_times, partitions, stats, result) -> ReducedTrajectory:
    """Pad the per-save particle sets to n rows; saves after a failure are NaN."""
    shape = saves[0][0].shape[1:]
    dtype = saves[0][0].dtype
    particles = np.full((len(ts), n, *shape), np.nan, dtype)
    masses = np.zeros((len(ts), n), dtype)
    labels = np.zeros((len(ts), n), dtype=np.int32)
    counts = np.zeros(len(ts), dtype=np.int32)
    for t, (x, m, tokens) in enumerate(saves):
        k = len(m)
        particles[t, :k], particles[t, k:] = x, x[0]
        masses[t, :k] = m
        labels[t] = tokens
        counts[t] = k
    return ReducedTrajectory(
        ts=jnp.asarray(ts),
        particles=jnp.asarray(particles),
        masses=jnp.asarray(masses),
        labels=jnp.asarray(labels),
        counts=jnp.asarray(counts),
        merge_times=jnp.asarray(np.asarray(merge_times, dtype)),
        partitions=jnp.asarray(np.stack(partitions).astype(np.int32)),
        stats=stats,
        result=result,
    )

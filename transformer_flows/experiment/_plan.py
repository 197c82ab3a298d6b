"""How a simulation config is cut into compiled programs and chunks (no JAX here)."""

import dataclasses

import numpy as np

from ._registry import OBSERVABLES, WEIGHTS
from ._schema import SimulationConfig

# Cap of automatic chunks: keeps the progress bar and the resume granularity useful (and a
# vmapped adaptive solve waits for its slowest member, so huge chunks gain little).
MAX_AUTO_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class Shape:
    """One compiled program: a fixed (n, d) and a group of weight ensembles. Identity weights
    run alone (no matrices at all); the random ensembles of one d share a program, their draws
    chosen per element by `lax.switch`, so the ensemble is one more vmapped axis."""

    n: int
    d: int
    weights: tuple[str, ...]
    placement: str = "post_ln"  # normalisation placement (PLACEMENTS): one program each
    initial: str = "sphere"  # how starts are drawn
    heads: int | None = None  # H heads of stacked random weights (None: no head axis)
    layers: int | None = None  # L layers of stacked random weights (None: no layer axis)

    @property
    def random(self) -> bool:
        return WEIGHTS[self.weights[0]].draw is not None

    @property
    def label(self) -> str:
        names = "+".join(w.replace(":", "-") for w in self.weights)
        extra = "" if self.placement == "post_ln" else f"_{self.placement}"
        extra += "" if self.initial == "sphere" else f"_{self.initial}"
        extra += "" if self.heads is None else f"_H{self.heads}"
        extra += "" if self.layers is None else f"_L{self.layers}"
        return f"n{self.n}_d{self.d}_{names}{extra}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Within a program the combos (weights, β, start, tolerance, *params) are flattened in
    that order and cut into chunks of equal length (the last one padded)."""

    shapes: tuple[Shape, ...]
    beta: np.ndarray
    starts: np.ndarray
    tolerances: np.ndarray  # (R,): rtol = atol per tolerance-axis entry (rtol if no axis)
    has_tolerance_axis: bool
    params: dict[str, np.ndarray]  # swept field parameters, in config order
    times: np.ndarray
    chunk_sizes: tuple[int, ...]  # combos per call, one per shape (the memory need grows with d)

    def inner_shape(self, shape: Shape) -> tuple[int, ...]:
        return (
            len(shape.weights),
            len(self.beta),
            len(self.starts),
            len(self.tolerances),
            *(len(values) for values in self.params.values()),
        )

    def num_combos(self, shape: Shape) -> int:
        return int(np.prod(self.inner_shape(shape)))

    def chunk_length(self, shape: Shape) -> int:
        """Combos per call of this shape's program (never more than it has)."""
        return min(self.chunk_sizes[self.shapes.index(shape)], self.num_combos(shape))

    def num_chunks(self, shape: Shape) -> int:
        return -(-self.num_combos(shape) // self.chunk_length(shape))

    def chunk_indices(self, shape: Shape, chunk: int) -> tuple[np.ndarray, ...]:
        """Per inner axis, the index of each combo of the chunk, padded to the chunk length by
        repeating the last combo (every call then has the compiled shape)."""
        first = chunk * self.chunk_length(shape)
        index = np.arange(first, first + self.chunk_length(shape))
        index = np.minimum(index, self.num_combos(shape) - 1)
        return np.unravel_index(index, self.inner_shape(shape))

    def chunk_count(self, shape: Shape, chunk: int) -> int:
        """The combos of the chunk that are not padding."""
        first = chunk * self.chunk_length(shape)
        return min(self.chunk_length(shape), self.num_combos(shape) - first)

    def total_chunks(self) -> int:
        return sum(self.num_chunks(shape) for shape in self.shapes)


def plan_sweep(config: SimulationConfig) -> Plan:
    model, sweep = config.model, config.sweep
    identity = tuple(w for w in model.weights if WEIGHTS[w].draw is None)
    random = tuple(
        w for w in model.weights if WEIGHTS[w].draw is not None and WEIGHTS[w].schema is None
    )
    # A parameterised ensemble draws other shapes (per-head Q, K of k rows): its own program.
    parameterised = [(w,) for w in model.weights if WEIGHTS[w].schema is not None]
    groups = [group for group in (identity, random) if group] + parameterised
    shapes = tuple(
        Shape(n, d, group, placement, initial, heads, layers)
        for n in model.n
        for d in model.d
        for heads in model.head_counts
        for layers in model.layer_counts
        for placement in model.placement
        for initial in model.initial
        for group in groups
    )
    times = config.times
    chunk_sizes = tuple(
        sweep.chunk_size if sweep.chunk_size != "auto" else _auto_chunk_size(config, shape)
        for shape in shapes
    )
    return Plan(
        shapes=shapes,
        beta=np.asarray(sweep.betas, dtype=float),
        starts=np.arange(sweep.starts),
        tolerances=np.array(sweep.tolerance or [config.solver.rtol]),
        has_tolerance_axis=sweep.tolerance is not None,
        params={name: np.asarray(values) for name, values in sweep.params.items()},
        times=times,
        chunk_sizes=chunk_sizes,
    )


def _auto_chunk_size(config: SimulationConfig, shape: Shape) -> int:
    """Combos per call so that saved outputs plus solver work arrays fit the memory budget."""
    n, d = shape.n, shape.d
    saved = sum(
        int(np.prod([n, d][: len(OBSERVABLES[name].dims)])) for name in config.observables.names
    )
    # Tsit5 keeps ~10 stage copies of the state, attention a few n×n arrays; random
    # ensembles hold Q, K, V (per head and layer) and the draws of every ensemble.
    stack = (shape.heads or 1) * (shape.layers or 1)
    matrices = 4 * (len(shape.weights) + 3) * d * d * stack if shape.random else 0
    per_combo = 8 * (len(config.times) * saved + 16 * n * d + 8 * n * n) + 8 * matrices
    fits = int(config.sweep.memory_budget_mb * 2**20 // per_combo)
    return max(1, min(fits, MAX_AUTO_CHUNK))

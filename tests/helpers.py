"""Shared references for the tests: independent NumPy/SciPy restatements of the models, and a
counter of jit compilations."""

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from scipy.integrate import solve_ivp


def equiangular_reference(ts, n, beta, model):
    """γ_β(t) from (6.9) (SA) or (6.10) (USA), float64 scipy DOP853."""

    def rhs(t, g):
        growth = (1 - g) * ((n - 1) * g + 1)
        if model == "SA":
            return 2 * growth / (np.exp(beta * (1 - g)) + n - 1)
        return (2 / n) * np.exp(beta * g) * growth

    sol = solve_ivp(rhs, (ts[0], ts[-1]), [0.0], t_eval=ts, method="DOP853", rtol=1e-13, atol=1e-15)
    return sol.y[0]


def off_diagonal(gram):
    n = gram.shape[-1]
    return gram[..., ~np.eye(n, dtype=bool)]


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# Every shipped config; the sweep and theory ones, and the fits (configs/fit_*.yaml). The
# pretrained-model ones need a checkpoint (tests/test_pretrained_experiment.py runs them).
CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
SWEEP_CONFIGS = [path for path in CONFIGS if not path.name.startswith(("fit_", "pretrained_"))]
PRETRAINED_CONFIGS = [path for path in CONFIGS if path.name.startswith("pretrained_")]
FIT_CONFIGS = [path for path in CONFIGS if path.name.startswith("fit_")]


# jax.monitoring events recorded by `jax.jit` on a cache miss (names from jax._src.dispatch;
# the positive controls in tests/test_fields.py fail if a jax release renames them).
_JAXPR_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class Compilations:
    """What `count_compilations` saw: the names of the functions traced to a jaxpr and of
    those compiled by XLA, in order (one entry per trace or compilation)."""

    traced: list[str] = dataclasses.field(default_factory=list)
    compiled: list[str] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def count_compilations() -> Iterator[Compilations]:
    """Record every jit trace and XLA compilation inside the block:

        with count_compilations() as log:
            f(x)
        assert log.compiled == []

    A jax.monitoring duration listener is registered on entry and unregistered on exit (even
    if the block raises); listeners registered by anyone else are left alone. jit records
    the events only on a cache miss, so a call that reuses a compiled program adds nothing.
    Eager (op-by-op) work on new shapes compiles too: prepare inputs before the block.
    """
    log = Compilations()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _JAXPR_TRACE_EVENT:
            log.traced.append(str(kwargs.get("fun_name", "?")))
        elif event == _BACKEND_COMPILE_EVENT:
            log.compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# --- hidden-state statistics (tests/test_hidden_statistics.py, test_pretrained_experiment.py)


def _cosine(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def hidden_statistics_reference(x, *, delta, beta, edges):
    """Every statistic of `tf.hidden_state_statistics` for one configuration x (n, d), by loops
    over pairs in float64 (numpy SVD and histogram, scipy connected components)."""
    import itertools

    from scipy.sparse.csgraph import connected_components

    n = x.shape[0]
    theta = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = x - x.mean(axis=0)
    pairs = list(itertools.permutations(range(n), 2))
    singular = np.linalg.svd(theta, compute_uv=False)
    p = singular / singular.sum()
    p = p[p > 0]
    gram = theta @ theta.T
    _, labels = connected_components(gram >= 1 - delta, directed=False)
    upper = [gram[i, j] for i, j in itertools.combinations(range(n), 2)]
    return {
        "mean_cosine": np.mean([_cosine(x[i], x[j]) for i, j in pairs]),
        "centred_cosine": np.mean([_cosine(y[i], y[j]) for i, j in pairs]),
        "effective_rank": np.exp(-np.sum(p * np.log(p))),
        "cluster_count": len(set(labels)),
        "clustered_fraction": np.mean([gram[i, j] >= 1 - delta for i, j in pairs]),
        "energy": np.exp(-beta) * np.sum(np.exp(beta * gram)) / (2 * beta * n**2),
        "mean_radius": np.mean(np.linalg.norm(x, axis=1)),
        "cosine_histogram": np.histogram(upper, edges, density=True)[0],
    }


class RandomStatesModel:
    """A stand-in for `tf.pretrained.PretrainedTransformer` with random states (no checkpoint, no
    torch): for tests of the `pretrained` experiment's bookkeeping and figures. Token ids are the
    word indices; each source's states are random Gaussians (layers + 1 or len(times), n, d),
    drawn from a seed that depends on the source, n and the layer count."""

    family, num_layers, d_model, num_heads, causal = "albert", 2, 8, 2, False

    def tokenize(self, text, truncate=False):
        return np.arange(len(text.split()))

    def _states(self, source, token_ids, count):
        rng = np.random.default_rng([source, len(token_ids), count])
        return rng.standard_normal((count, len(token_ids), self.d_model)).astype(np.float32)

    def hidden_states(self, token_ids, *, num_layers=None):
        return self._states(0, token_ids, (num_layers or self.num_layers) + 1)

    def discrete_map_states(self, token_ids, *, num_layers=None):
        return self._states(1, token_ids, (num_layers or self.num_layers) + 1)

    def flow_states(self, token_ids, times, *, num_layers=None, solver=None, **solve_options):
        return self._states(2, token_ids, len(times))

"""Fitting Q, K, V and β by differentiating a loss on `solve` outputs: an optax loop with one
`eqx.filter_jit` step.

- The model is a field (`SelfAttention`, `UnnormalizedSelfAttention`, with heads and per-layer
  weights as they come) or an `AbstractFieldModel` that builds one (`_field_models`).
- A filter spec (pytree of bools, `trainable_spec`) picks the trained leaves; the step
  differentiates only those and `eqx.apply_updates` skips the rest, so frozen leaves are
  bit-for-bit unchanged.
- β stays >= 0 by projection: after every update β ← max(β, 0) (projected gradient descent;
  a frozen β, already >= 0, is left exactly as it is).
- Every step draws a fresh batch of inputs from the task with key fold_in(train_key, step), so
  a run resumed from a checkpoint continues exactly as an uninterrupted one (loss history and
  held-out evaluations included: they are saved beside the checkpoint).
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._custom_types import Particles
from ._field._base import AbstractSphereField
from ._field._self_attention import AbstractAttentionField
from ._field_models import (
    LowRank as LowRank,  # _fit_command imports it from here
    LowRankAttention,
    as_field,
    check_nonempty_weights,
)
from ._losses import AbstractTask
from ._progress import compile_notice
from ._solve import Trajectory, solve


def trainable_spec(model: PyTree, names: Sequence[str] = ("Q", "K", "V", "beta")) -> PyTree:
    """A filter spec (pytree of bools) training the attributes `names` of `model` (a field or
    `LowRankAttention`; a `LowRank` weight trains both factors) and freezing everything else.
    For finer control edit the result with `eqx.tree_at`."""
    fields = {f.name for f in dataclasses.fields(model)}
    spec = jax.tree_util.tree_map(lambda _: False, model)
    for name in names:
        if name not in fields:
            raise ValueError(
                f"`names` has {name!r}, which is not an attribute of {type(model).__name__}; "
                f"choose among {sorted(fields)}."
            )
        if getattr(model, name) is None:
            raise ValueError(
                f"`{name}` is None (the identity) and cannot be trained; give the model an "
                f"explicit `{name}` matrix (e.g. the identity) to train it."
            )
        spec = eqx.tree_at(lambda s, name=name: getattr(s, name), spec, replace=True)
    return spec


class FlowOptions(eqx.Module):
    """How the flow is solved during fitting: from t = 0 to `horizon` with `solve`'s options.
    `adjoint`: `diffrax.RecursiveCheckpointAdjoint()` (default; exact gradient of the discrete
    solve; `checkpoints=` trades memory for recomputation) or `diffrax.BacksolveAdjoint()`."""

    horizon: float = eqx.field(static=True)
    solver: diffrax.AbstractSolver | None = None
    dt0: float | None = eqx.field(default=None, static=True)
    rtol: float = eqx.field(default=1e-4, static=True)
    atol: float = eqx.field(default=1e-4, static=True)
    max_steps: int = eqx.field(default=4096, static=True)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()

    def __check_init__(self):
        if not self.horizon > 0:
            raise ValueError(f"`horizon` (final time T) must be > 0, got {self.horizon}.")

    def trajectory(
        self, field: AbstractSphereField, x0: Particles, num_saves: int = 2
    ) -> Trajectory:
        ts = jnp.linspace(0.0, self.horizon, num_saves, dtype=x0.dtype)
        return solve(
            field,
            x0,
            ts,
            solver=self.solver,
            dt0=self.dt0,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )

    def final(self, field: AbstractSphereField, x0: Particles) -> Particles:
        return self.trajectory(field, x0).xs[-1]


def batch_loss(
    model: PyTree, task: AbstractTask, flow: FlowOptions, key: PRNGKeyArray, batch_size: int
) -> Float[Array, ""]:
    """Mean task loss over `batch_size` fresh inputs drawn with `key` (vmap over solves)."""
    x0, aux = jax.vmap(task.sample)(jax.random.split(key, batch_size))
    field = as_field(model)
    x_final = jax.vmap(lambda x: flow.final(field, x))(x0)
    return jnp.mean(jax.vmap(task.loss)(x_final, aux))


# XLA's CPU backend hands dots, elementwise loops and reductions to its YNNPACK library. On the
# small arrays of a fit (n = 16 tokens, d = 3) the elementwise and reduction fusions of the
# backward pass cost 10-40 µs each against 1-5 µs compiled in place: the vector-Jacobian product
# of one field evaluation took 10x the evaluation, 3x with dots only. Only dots go to the
# library in the training step (an XLA debug option; other backends ignore it). Not in the
# forward-only programs: there the defaults measured steadier (median 2.9 vs 4.5 ms).
FIT_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def make_step(
    task: AbstractTask,
    optimizer: optax.GradientTransformation,
    flow: FlowOptions,
    filter_spec: PyTree,
    batch_size: int,
) -> Callable:
    """`step(model, opt_state, key) -> (model, opt_state, loss)`, jitted once (a retrace
    raises: the shapes and options must not change between steps)."""

    @eqx.filter_jit(compiler_options=FIT_COMPILER_OPTIONS)
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(model, opt_state, key):
        trainable, frozen = eqx.partition(model, filter_spec)

        def loss_of(params):
            return batch_loss(eqx.combine(params, frozen), task, flow, key, batch_size)

        loss, grads = eqx.filter_value_and_grad(loss_of)(trainable)
        # optax mixes Python floats with its int32 step count (Adam's bias correction): let it
        # promote as standard JAX does, also when the caller has chosen strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
        model = project_beta(eqx.apply_updates(model, updates))
        return model, opt_state, loss

    return step


def project_beta(model: PyTree) -> PyTree:
    """β ← max(β, 0) in every attention field or field model inside `model`."""

    def is_node(node):
        return isinstance(node, (AbstractAttentionField, LowRankAttention))

    def clip(node):
        if not is_node(node):
            return node
        return eqx.tree_at(lambda m: m.beta, node, jnp.maximum(node.beta, 0))

    return jax.tree_util.tree_map(clip, model, is_leaf=is_node)


@eqx.filter_jit  # forward only: XLA's defaults are steadier there (BENCHMARKS.md §5)
def final_states(model: PyTree, flow: FlowOptions, x0: Float[Array, "batch n d"]) -> Array:
    """Final tokens x(T) for a batch of inputs (no gradient; used for evaluation)."""
    field = as_field(model)
    return jax.vmap(lambda x: flow.final(field, x))(x0)


def evaluate(
    model: PyTree, task: AbstractTask, flow: FlowOptions, key: PRNGKeyArray, num_samples: int
) -> dict[str, float]:
    """Held-out metrics (`task.metrics`, as floats) and `heldout_loss` on `num_samples`
    inputs drawn with `key` (use a key never used for training)."""
    x0, aux = jax.vmap(task.sample)(jax.random.split(key, num_samples))
    x_final = final_states(model, flow, x0)
    # Python floats: they go to JSON with the checkpoint and come back equal.
    metrics = {name: float(value) for name, value in task.metrics(np.asarray(x_final), aux).items()}
    metrics["heldout_loss"] = float(jnp.mean(jax.vmap(task.loss)(x_final, aux)))
    return metrics


@dataclasses.dataclass(frozen=True)
class FitResult:
    """`model`: the trained model; `opt_state`; `loss_history`: the training loss of every
    step run so far (resumed steps included); `evaluations`: held-out metrics, each with its
    `step`, on the schedule of `fit` (resumed runs included: the same steps and values as an
    uninterrupted run); `train_seconds`: wall time of this call's steps, the first (compiling)
    step excluded and timed apart as `first_step_seconds`."""

    model: PyTree
    opt_state: PyTree
    loss_history: np.ndarray
    evaluations: list[dict]
    train_seconds: float
    first_step_seconds: float


class FitInterrupted(KeyboardInterrupt):
    """`fit` stopped by Ctrl-C (SIGINT): `step` of `num_steps` steps are in `checkpoint`
    (0 and None without one). Calling `fit` again with the same `checkpoint` resumes there."""

    def __init__(self, step: int, num_steps: int, checkpoint: pathlib.Path | None):
        super().__init__(step, num_steps, checkpoint)
        self.step, self.num_steps, self.checkpoint = step, num_steps, checkpoint

    def __str__(self) -> str:
        where = f"in {self.checkpoint}" if self.checkpoint is not None else "(no checkpoint=)"
        return f"fit interrupted: {self.step}/{self.num_steps} steps saved {where}"


def fit(
    model: PyTree,
    task: AbstractTask,
    optimizer: optax.GradientTransformation,
    *,
    key: PRNGKeyArray,
    num_steps: int,
    flow: FlowOptions,
    batch_size: int = 16,
    filter_spec: PyTree | None = None,
    eval_every: int = 0,
    eval_size: int = 64,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    progress: bool = False,
) -> FitResult:
    """Train `model` for `num_steps` optimizer steps on batches of `batch_size` inputs.

    **Arguments:**
    - `model`: a sphere field or an `AbstractFieldModel` (e.g. `LowRankAttention`).
    - `task`: an `AbstractTask` (`LabeledTargets`, `TargetPartition`, `TargetMeasure`).
    - `optimizer`: any optax transformation (schedules and clipping via `optax.chain`).
    - `key`: split into a training key (step s uses fold_in(key, s)) and a held-out key.
    - `flow`: `FlowOptions` (horizon, solver, adjoint, ...).
    - `filter_spec`: which leaves train (default: every inexact array); see `trainable_spec`.
    - `eval_every`: held-out evaluations at step 0, at every multiple of `eval_every` and at
      `num_steps` (0: only at 0 and `num_steps`).
    - `checkpoint`: a file, used under exactly this name (no extension is added); if it
      exists the run resumes from it, and it is rewritten atomically every
      `checkpoint_every` steps (0: only at the end), with the loss history and the
      evaluations beside it (see `save_checkpoint`).
    - `progress`: a tqdm progress bar (stderr) with the current loss; while the first step
      (and the first held-out evaluation) compiles, it says so with the elapsed time.

    **Returns:** a `FitResult`. Ctrl-C raises `FitInterrupted` (a `KeyboardInterrupt`) with
    the step saved in `checkpoint`.
    """
    for name, value, low in (
        ("num_steps", num_steps, 0),
        ("batch_size", batch_size, 1),
        ("eval_every", eval_every, 0),
        ("eval_size", eval_size, 1),
        ("checkpoint_every", checkpoint_every, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if not isinstance(task, AbstractTask):
        raise ValueError(f"`task` must be an AbstractTask (e.g. LabeledTargets), got {task!r}.")
    field = as_field(model)
    check_nonempty_weights(field)
    dim = getattr(field, "dim", None)  # attention fields know d from their weights
    if dim is not None and dim != task.dim:
        raise ValueError(f"The model acts on d={field.dim} but the task has d={task.dim}.")
    if filter_spec is None:
        filter_spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
    # A weakly typed leaf (β = 1.0) comes back strongly typed from the update: fix the types
    # now so the step compiles once.
    model = jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype) if eqx.is_array(leaf) else leaf, model
    )
    train_key, heldout_key = jax.random.split(key)
    opt_state = optimizer.init(eqx.filter(eqx.filter(model, filter_spec), eqx.is_inexact_array))

    def scheduled(at):
        return at in (0, num_steps) or (eval_every > 0 and at % eval_every == 0)

    start, losses, evaluations = 0, [], []
    path = None if checkpoint is None else pathlib.Path(checkpoint)
    if path is not None and path.exists():
        model, opt_state, start, history, stored = load_checkpoint(path, model, opt_state)
        losses = list(history)
        # Kept: those this call's schedule would have made (a run stopped early by a smaller
        # `num_steps` also evaluated at its end, which an uninterrupted run does not).
        evaluations = [e for e in stored if scheduled(e["step"])]
    step = make_step(task, optimizer, flow, filter_spec, batch_size)

    def record_evaluation(at):
        evaluations.append({"step": at, **evaluate(model, task, flow, heldout_key, eval_size)})

    first_step_seconds = train_seconds = 0.0
    saved_step = start if path is not None and path.exists() else 0
    with tqdm(
        total=num_steps,
        initial=start,
        unit="step",
        desc="fit",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        try:
            if not evaluations or (scheduled(start) and evaluations[-1]["step"] != start):
                with compile_notice(bar):  # the evaluation compiles the held-out solve
                    record_evaluation(start)  # always one evaluation before training (a baseline)
            for s in range(start, num_steps):
                began = time.perf_counter()
                step_key = jax.random.fold_in(train_key, s)
                with compile_notice(bar) if s == start else contextlib.nullcontext():
                    model, opt_state, loss = step(model, opt_state, step_key)
                losses.append(float(loss))  # blocks until the step is done
                elapsed = time.perf_counter() - began
                if s == start:
                    first_step_seconds = elapsed
                else:
                    train_seconds += elapsed
                done = s + 1
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
                bar.update(1)
                if scheduled(done):
                    record_evaluation(done)
                if path is not None and (
                    done == num_steps or (checkpoint_every and done % checkpoint_every == 0)
                ):
                    save_checkpoint(path, model, opt_state, done, np.asarray(losses), evaluations)
                    saved_step = done
        except FitInterrupted:
            raise
        except KeyboardInterrupt:
            raise FitInterrupted(saved_step, num_steps, path) from None
    return FitResult(
        model, opt_state, np.asarray(losses), evaluations, train_seconds, first_step_seconds
    )


def _history_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".history.npy")


def _evaluations_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".evaluations.json")


def save_checkpoint(
    path, model, opt_state, step: int, history: np.ndarray, evaluations: Sequence[dict] = ()
) -> None:
    """Write (model, opt_state, step) with `eqx.tree_serialise_leaves` to exactly `path` (no
    extension added), the loss history beside it (`<path>.history.npy`) and the held-out
    evaluations (`<path>.evaluations.json`). Each file is written to a temporary name and
    renamed, the checkpoint last, so a crash never leaves a half-written checkpoint and the
    side files always reach at least its step."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(_history_path(path), lambda f: np.save(f, history))
    text = json.dumps(list(evaluations), indent=1).encode()
    _atomic(_evaluations_path(path), lambda f: f.write(text))
    _atomic(path, lambda f: eqx.tree_serialise_leaves(f, (model, opt_state, jnp.asarray(step))))


def load_checkpoint(path, model, opt_state) -> tuple[PyTree, PyTree, int, np.ndarray, list[dict]]:
    """Read a checkpoint written by `save_checkpoint` from exactly `path`; `model` and
    `opt_state` give the structure (same shapes and optimizer as the run that wrote it).
    Returns (model, opt_state, step, loss history, evaluations up to that step); a checkpoint
    without an evaluations file (older runs) has none."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:  # a path would get ".eqx" appended by equinox
            model, opt_state, step = eqx.tree_deserialise_leaves(
                f, (model, opt_state, jnp.asarray(0))
            )
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"Checkpoint {path} does not match this model/optimizer ({err}); resume with the "
            "same configuration or remove the file to start afresh."
        ) from err
    step = int(step)
    history = np.load(_history_path(path))[:step]
    evaluations_path = _evaluations_path(path)
    evaluations = []
    if evaluations_path.exists():
        evaluations = [e for e in json.loads(evaluations_path.read_text()) if e["step"] <= step]
    return model, opt_state, step, history, evaluations


def _atomic(path: pathlib.Path, write: Callable) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        write(f)
    os.replace(temporary, path)

"""Running a `fit` config into its output directory: build (via `_build`), fit, and write
`params.eqx`, `metrics.json` and the figures `loss` and `trajectories` (`_fit_plot`). The
directory is locked and claimed like a sweep's: a changed config is refused, a rerun resumes from
`checkpoint.eqx`."""

import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from .._compilation_cache import raising_checks
from .._field_models import as_field
from .._fit import FitInterrupted, evaluate, fit, trainable_spec
from .._losses import TargetMeasure
from ._build import build_fit_model, build_flow, build_optimizer, build_task
from ._errors import FitSolveFailed
from ._fit_plot import draw_fit_figures
from ._interrupt import FiguresInterrupted, RunInterrupted
from ._registry import FIELDS
from ._run_chunks import claimed_run
from ._schema import FitConfig
from ._store import RunDirectory

CHECKPOINT = "checkpoint.eqx"
PARAMS = "params.eqx"
METRICS = "metrics.json"


def load_fitted_model(config: FitConfig, path: str | Path):
    """The model written by a fit to DIR/params.eqx, rebuilt from the same config."""
    return eqx.tree_deserialise_leaves(path, build_fit_model(config))


def run_fit(config: FitConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Fit as configured into `out` and return the metrics (also in `out/metrics.json`).
    Its solves' checks raise even where this process made them return NaN (`transformer-flows
    run`'s sweeps): a solve past its step bound stops the fit with the key that bounds it."""
    from ._schema import import_fields

    config = import_fields(config)
    with claimed_run(out, config, config.numerics()) as run, raising_checks():
        try:
            return _fit_into(config, run, progress)
        except FitInterrupted as stopped:
            raise RunInterrupted(stopped.step, stopped.num_steps, "steps", run.out) from None


def _fit_into(config: FitConfig, run: RunDirectory, progress: bool) -> dict:
    model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
    train = config.train
    started = time.perf_counter()
    with _step_bound(config, run):
        result = fit(
            model,
            task,
            build_optimizer(config),
            key=jax.random.key(config.seed),
            num_steps=train.steps,
            flow=flow,
            batch_size=train.batch_size,
            filter_spec=trainable_spec(model, train.parameters),
            eval_every=train.eval_every,
            eval_size=train.eval_size,
            checkpoint=run.out / CHECKPOINT,
            checkpoint_every=train.checkpoint_every,
            progress=progress,
        )
    wall = time.perf_counter() - started
    fitted = as_field(result.model)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, result.model)
    run.write_bytes(PARAMS, buffer.getvalue())
    history = result.loss_history
    tail = history[-max(1, len(history) // 10) :] if len(history) else np.array([np.nan])
    after, before = result.evaluations[-1], result.evaluations[0]
    if before["step"] != 0:  # resumed without the first evaluation: score the initial model
        heldout_key = jax.random.split(jax.random.key(config.seed))[1]
        with _step_bound(config, run):
            before = {"step": 0, **evaluate(model, task, flow, heldout_key, train.eval_size)}
    metrics = {
        "task": config.task.kind,
        "headline": task.headline,
        "train_loss": _finite(np.mean(tail)),
        "train_loss_initial": _finite(history[0]) if len(history) else None,
        **{key: _finite(value) for key, value in after.items() if key != "step"},
        **{f"{key}_before": _finite(value) for key, value in before.items() if key != "step"},
        "steps": int(len(history)),
        "train_seconds": result.train_seconds,
        "first_step_seconds": result.first_step_seconds,
        "wall_seconds": wall,
        "beta": _finite(fitted.beta) if hasattr(fitted, "beta") else None,
        "evaluations": [
            {k: _finite(v) if k != "step" else v for k, v in e.items()} for e in result.evaluations
        ],
        "loss_history": [_finite(v) for v in history],
        # Non-finite parameters (e.g. a NaN β) or final loss: a failed fit, never a result.
        "diverged": _diverged(result.model, history),
    }
    if isinstance(task, TargetMeasure):
        metrics["heldout_mmd2_noise_floor"] = task.noise_floor(jax.random.key(1), train.eval_size)
    run.write_text(METRICS, json.dumps(metrics, indent=2, allow_nan=False))
    try:
        # The figure solves the fitted flow from another input: it can need more steps too.
        with _step_bound(config, run, figures=True):
            draw_fit_figures(
                metrics,
                config,
                run.out,
                before=model,
                after=result.model,
                task=task,
                flow=flow,
                key=example_key(config),
            )
    except KeyboardInterrupt:
        raise FiguresInterrupted(
            f"the fit ({PARAMS}, {METRICS})", run.out, f"`transformer-flows plot {run.out}`"
        ) from None
    return metrics


# What diffrax's error says when a solve reaches its `max_steps` (equinox raises it at run time
# from inside the compiled step, as a RuntimeError).
MAX_STEPS_MESSAGE = "maximum number of solver steps was reached"


@contextlib.contextmanager
def _step_bound(config: FitConfig, run: RunDirectory, figures: bool = False) -> Iterator[None]:
    """Inside: a solve that reaches its step bound raises `FitSolveFailed` naming the key."""
    try:
        yield
    except RuntimeError as err:
        if MAX_STEPS_MESSAGE not in str(err):
            raise
        raise FitSolveFailed(_max_steps_message(config, run, figures)) from err


def _max_steps_message(config: FitConfig, run: RunDirectory, figures: bool = False) -> str:
    """Which key bounded the failed solve, where the fit stands, and the fix."""
    if config.flow.adjoint == "stored":
        key, value = "flow.stored_max_steps", config.flow.stored_max_steps
    else:
        key, value = "solver.max_steps", config.solver.max_steps
    if figures:
        what = (
            f"the fit finished ({PARAMS}, {METRICS} written) but the solve of its trajectories "
            f"figure needed more than {key} = {value} steps; it was not truncated, and the "
            "figures were not drawn."
        )
    else:
        history = run.out / (CHECKPOINT + ".history.npy")
        saved = len(np.load(history)) if history.is_file() else 0
        what = (
            f"the fit failed: a solve (of a training step or a held-out evaluation) needed "
            f"more than {key} = {value} steps; it was not truncated, and no metrics were "
            f"written ({CHECKPOINT} holds step {saved} of {config.train.steps})."
        )
    return (
        f"{what} Fix: rerun with a larger {key} (a forward solve's "
        "trajectory.stats['num_steps'] says how many it takes) and a new --out "
        f"({str(run.out)!r} holds this config and refuses another)"
    )


def _diverged(model, history) -> bool:
    """Whether a trained parameter or the last loss is NaN or inf."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))]
    finite = all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in leaves)
    return not finite or (len(history) > 0 and not np.isfinite(history[-1]))


def _finite(value) -> float | None:
    """A float for JSON, None for NaN/inf (a diverged loss is reported, not hidden)."""
    value = float(value)
    return value if np.isfinite(value) else None


def example_key(config: FitConfig):
    """The key of the held-out input drawn in `trajectories` (the same for every redraw)."""
    return jax.random.key(config.seed + 12345)


def load_fit(out: str | Path) -> tuple[FitConfig, dict, object, object]:
    """The config, metrics, initial model and fitted model of a finished fit in `out`."""
    from ._schema import ConfigError, load_config

    out = Path(out)
    config = load_config(out / "config.yaml")
    if config.experiment != "fit":
        raise ConfigError(f"{str(out)!r} holds a {config.experiment} run, not a fit.")
    missing = [name for name in (METRICS, PARAMS) if not (out / name).is_file()]
    if missing:
        raise ConfigError(
            f"{str(out)!r}: {', '.join(missing)} does not exist: the fit has not finished. "
            "Fix: rerun its `transformer-flows fit` command (it resumes from checkpoint.eqx)."
        )
    field = config.model.field
    if FIELDS.is_import_path(field):
        raise ConfigError(
            f"{str(out)!r}: this fit names code (model.field: {field!r}); redrawing or "
            "summarizing it rebuilds its model, which would import that class, and reading a "
            "run directory never imports anything. Fix: rerun its `transformer-flows fit` "
            f"command (it imports the class, as you allowed when you ran it), or read "
            f"{METRICS} directly."
        )
    metrics = json.loads((out / METRICS).read_text())
    return config, metrics, build_fit_model(config), load_fitted_model(config, out / PARAMS)


def redraw_fit(out: str | Path, figures_dir: str | Path | None = None) -> list[Path]:
    """Draw the figures of a finished fit in `out` again (into `figures_dir`, default `out`)."""
    config, metrics, before, after = load_fit(out)
    target = Path(figures_dir or out)
    target.mkdir(parents=True, exist_ok=True)
    return draw_fit_figures(
        metrics,
        config,
        target,
        before=before,
        after=after,
        task=build_task(config),
        flow=build_flow(config),
        key=example_key(config),
    )


def fit_summary(config: FitConfig, metrics: dict, before, after) -> dict:
    """The numbers of a finished fit: loss, held-out metric before and after, and the
    parameters (β; Frobenius norms of Q, K, V, None for the identity) before and after."""
    headline = metrics["headline"]
    result = {
        "name": config.name,
        "task": metrics["task"],
        "steps": metrics["steps"],
        "diverged": metrics["diverged"],
        "train_loss_initial": metrics["train_loss_initial"],
        "train_loss": metrics["train_loss"],
        f"{headline}_before": metrics.get(f"{headline}_before"),
        headline: metrics.get(headline),
        "train_seconds": metrics["train_seconds"],
    }
    parameters = []
    for name in ("beta", "Q", "K", "V"):
        values = [_parameter(as_field(model), name) for model in (before, after)]
        if values == [None, None] and name != "beta":
            continue
        parameters.append({"parameter": name, "before": values[0], "after": values[1]})
    result["parameters"] = parameters
    result["evaluations"] = metrics["evaluations"]
    return result


def _parameter(field, name: str) -> float | None:
    """β, or the Frobenius norm of a weight (None: absent, i.e. the identity)."""
    value = getattr(field, name, None)
    if value is None:
        return None
    array = np.asarray(value)
    return _finite(array if name == "beta" else np.linalg.norm(array.reshape(-1)))

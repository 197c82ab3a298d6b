"""Running a `fit` config into its output directory: build (via `_build`), fit, and write
`params.eqx`, `metrics.json`, `loss.png`, `trajectories_{before,after}.png`. The directory is
locked and claimed like a sweep's: a changed config is refused, a rerun resumes from
`checkpoint.eqx`."""

import io
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from .._field_models import as_field
from .._fit import FitInterrupted, evaluate, fit, trainable_spec
from .._losses import LabeledTargets, TargetMeasure
from ._build import build_fit_model, build_flow, build_optimizer, build_task
from ._interrupt import FiguresInterrupted, RunInterrupted
from ._schema import FitConfig
from ._store import RunDirectory, fingerprint

CHECKPOINT = "checkpoint.eqx"
PARAMS = "params.eqx"
METRICS = "metrics.json"


def load_fitted_model(config: FitConfig, path: str | Path):
    """The model written by a fit to DIR/params.eqx, rebuilt from the same config."""
    return eqx.tree_deserialise_leaves(path, build_fit_model(config))


def run_fit(config: FitConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Fit as configured into `out` and return the metrics (also in `out/metrics.json`)."""
    from ._schema import import_fields

    config = import_fields(config)
    run = RunDirectory(out)
    with run.lock():
        run.claim(config.to_yaml(), fingerprint(config.numerics()))
        run.remove_temporaries()
        try:
            return _fit_into(config, run, progress)
        except FitInterrupted as stopped:
            raise RunInterrupted(stopped.step, stopped.num_steps, "steps", run.out) from None


def _fit_into(config: FitConfig, run: RunDirectory, progress: bool) -> dict:
    model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
    train = config.train
    started = time.perf_counter()
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
        _plot_loss(history, result.evaluations, task.headline, run.out / "loss.png")
        example_key = jax.random.key(config.seed + 12345)
        for name, fitted in (("before", model), ("after", result.model)):
            _plot_trajectories(
                fitted,
                task,
                flow,
                example_key,
                f"{name} fitting",
                run.out / f"trajectories_{name}.png",
            )
    except KeyboardInterrupt:
        raise FiguresInterrupted(
            f"the fit ({PARAMS}, {METRICS})", run.out, "rerunning the same command"
        ) from None
    return metrics


def _diverged(model, history) -> bool:
    """Whether a trained parameter or the last loss is NaN or inf."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))]
    finite = all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in leaves)
    return not finite or (len(history) > 0 and not np.isfinite(history[-1]))


def _finite(value) -> float | None:
    """A float for JSON, None for NaN/inf (a diverged loss is reported, not hidden)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _plot_loss(history, evaluations, headline, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(np.arange(1, len(history) + 1), history, lw=1)
    scale = "log" if len(history) and np.all(history > 0) else "linear"
    left.set(xlabel="step", ylabel="training loss", yscale=scale)
    right.plot([e["step"] for e in evaluations], [e[headline] for e in evaluations], "o-")
    right.set(xlabel="step", ylabel=headline)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_trajectories(model, task, flow, key, title, path, num_saves: int = 60) -> None:
    """Token paths of one held-out input, coloured by label (targets as black stars, target
    measure samples as grey dots); d > 3 is drawn in the top-3 principal directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x0, aux = task.sample(key)
    xs = np.asarray(flow.trajectory(as_field(model), x0, num_saves).xs)  # (T, n, d)
    d = xs.shape[-1]
    if d == 3:
        basis = np.eye(3)
    else:
        flat = xs.reshape(-1, d)
        basis = np.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:3].T
    paths = xs @ basis
    colours = np.asarray(aux) if not isinstance(task, TargetMeasure) else np.zeros(xs.shape[1])
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    cmap = plt.get_cmap("tab10")
    for i in range(paths.shape[1]):
        ax.plot(*paths[:, i].T, color=cmap(int(colours[i]) % 10), lw=0.8, alpha=0.8)
    ax.scatter(*paths[0].T, c=[cmap(int(c) % 10) for c in colours], s=8, marker="o")
    ax.scatter(*paths[-1].T, c=[cmap(int(c) % 10) for c in colours], s=30, marker="D")
    if isinstance(task, LabeledTargets):
        ax.scatter(*(np.asarray(task.targets) @ basis).T, c="k", s=120, marker="*")
    if isinstance(task, TargetMeasure):
        ax.scatter(*(np.asarray(aux[1]) @ basis).T, c="0.5", s=6, marker=".")
    ax.set_title(f"{title} (t = 0 to {flow.horizon:g})" + ("" if d == 3 else ", PCA to 3-d"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

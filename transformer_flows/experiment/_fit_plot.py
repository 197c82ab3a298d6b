"""Figures of a fit directory: the training curve and held-out metric (`loss`), and the token
paths of one held-out input before and after fitting on the sphere, side by side
(`trajectories`). Written in the formats, resolution and style of the config's `plot:`."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .._field_models import as_field  # noqa: E402
from .._losses import LabeledTargets, TargetMeasure  # noqa: E402
from ._plot import figure_files, save_figure  # noqa: E402

HEADLINE_LABELS = {
    "heldout_accuracy": "held-out accuracy (nearest target)",
    "heldout_ari": "held-out adjusted Rand index",
    "heldout_mmd2": r"held-out $\mathrm{MMD}^2$",
}


def draw_fit_figures(metrics: dict, config, out, *, before, after, task, flow, key) -> list[Path]:
    """Draw `loss` and `trajectories` of a fit into `out`; returns the written files.

    **Arguments:**
    - `metrics`: the fit's metrics (`metrics.json`): loss history, evaluations, headline.
    - `config`: its `FitConfig` (`plot:` gives format, dpi and style).
    - `before`, `after`: the model before and after fitting; `task`, `flow`: as fitted.
    - `key`: draws the held-out input whose paths are shown (the same for both panels)."""
    out = Path(out)
    with figure_files(config.plot):
        written = plot_loss(metrics, out / "loss.png")
        written += plot_trajectories(before, after, task, flow, key, out / "trajectories.png")
    return written


def plot_loss(metrics: dict, path: Path) -> list[Path]:
    history = np.asarray([np.nan if v is None else v for v in metrics["loss_history"]], float)
    headline = metrics["headline"]
    evaluations = metrics["evaluations"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    left.plot(np.arange(1, len(history) + 1), history, lw=1, label="training loss (batch)")
    positive = len(history) and np.all(history[np.isfinite(history)] > 0)
    left.set(xlabel="step", ylabel="training loss", yscale="log" if positive else "linear")
    left.legend(fontsize=8)
    steps = [e["step"] for e in evaluations]
    values = [np.nan if e.get(headline) is None else e[headline] for e in evaluations]
    right.plot(steps, values, "o-", label=f"held-out ({metrics.get('task', 'task')})")
    if metrics.get("heldout_mmd2_noise_floor") is not None:
        right.axhline(
            metrics["heldout_mmd2_noise_floor"], color="0.4", ls=":", label="sampling noise floor"
        )
    right.set(xlabel="step", ylabel=HEADLINE_LABELS.get(headline, headline))
    right.legend(fontsize=8)
    beta = metrics.get("beta")
    fig.suptitle(
        f"{metrics['steps']} steps"
        + (rf", fitted $\beta = {beta:.4g}$" if beta is not None else ""),
        fontsize=9,
    )
    return save_figure(fig, path)


def _basis(paths: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """Coordinates to draw: the sphere itself for d = 2, 3; else the top 3 principal
    directions of all positions (both panels share them)."""
    d = paths[0].shape[-1]
    if d <= 3:
        return np.eye(d), ""
    flat = np.concatenate([p.reshape(-1, d) for p in paths])
    basis = np.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:3].T
    return basis, f"projection of S^{d - 1} on its top 3 principal directions"


def plot_trajectories(before, after, task, flow, key, path: Path, num_saves: int = 60):
    """One figure, two panels: the token paths of one held-out input under the model before
    and after fitting, on the circle (d = 2), the sphere (d = 3) or a 3-d projection."""
    x0, aux = task.sample(key)
    paths = [np.asarray(flow.trajectory(as_field(m), x0, num_saves).xs) for m in (before, after)]
    basis, note = _basis(paths)
    d3 = basis.shape[1] == 3
    labelled = not isinstance(task, TargetMeasure)
    labels = np.asarray(aux).astype(int) if labelled else np.zeros(paths[0].shape[1], int)
    cmap = plt.get_cmap("tab10")
    fig = plt.figure(figsize=(10, 4.8), layout="constrained")
    for column, (title, xs) in enumerate(
        zip(("before fitting", "after fitting"), paths, strict=True)
    ):
        coords = xs @ basis  # (T, n, 2 or 3)
        ax = fig.add_subplot(1, 2, column + 1, **({"projection": "3d"} if d3 else {}))
        _sphere(ax, d3, wire=not note)
        for i in range(coords.shape[1]):
            ax.plot(*coords[:, i].T, color=cmap(labels[i] % 10), lw=0.8, alpha=0.75)
        colours = [cmap(label % 10) for label in labels]
        ax.scatter(*coords[0].T, c=colours, s=10, marker="o")
        ax.scatter(*coords[-1].T, c=colours, s=36, marker="D", edgecolors="k", linewidths=0.4)
        if isinstance(task, LabeledTargets):
            ax.scatter(*(np.asarray(task.targets) @ basis).T, c="k", s=160, marker="*")
        if isinstance(task, TargetMeasure):
            ax.scatter(*(np.asarray(aux[1]) @ basis).T, c="0.5", s=6, marker=".")
        ax.set_title(f"{title} ($t = 0$ to ${flow.horizon:g}$)", fontsize=10)
        _ticks(ax, d3, ("PC1", "PC2", "PC3") if note else ("x", "y", "z"))
    handles = [
        Line2D([], [], color="0.3", marker="o", ls="-", lw=0.8, ms=4, label="path from $x_i(0)$"),
        Line2D(
            [], [], color="0.3", marker="D", ls="", ms=5, label=f"$x_i(T)$, $T = {flow.horizon:g}$"
        ),
    ]
    if labelled:
        handles += [
            Line2D([], [], color=cmap(c % 10), lw=2, label=f"label {c}") for c in np.unique(labels)
        ]
    if isinstance(task, LabeledTargets):
        handles.append(Line2D([], [], color="k", marker="*", ls="", ms=10, label="targets"))
    if isinstance(task, TargetMeasure):
        handles.append(Line2D([], [], color="0.5", marker=".", ls="", label="target samples"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    if note:
        fig.suptitle(note, fontsize=9)
    return save_figure(fig, path)


def _sphere(ax, d3: bool, wire: bool) -> None:
    """The unit circle or a wireframe sphere behind the paths (not for projections)."""
    if not wire:
        return
    if d3:
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
        ax.plot_wireframe(
            np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4
        )
    else:
        angle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(angle), np.sin(angle), color="0.8", lw=1)


def _ticks(ax, d3: bool, labels: tuple[str, ...]) -> None:
    """Three ticks per axis (−1, 0, 1), small labels: readable, never overlapping."""
    ticks = [-1, 0, 1]
    for name, label in zip(
        ("x", "y", "z")[: 3 if d3 else 2], labels[: 3 if d3 else 2], strict=True
    ):
        getattr(ax, f"set_{name}ticks")(ticks)
        getattr(ax, f"set_{name}lim")(-1.1, 1.1)
        getattr(ax, f"set_{name}label")(f"${label}$" if len(label) == 1 else label, fontsize=8)
    ax.tick_params(labelsize=7, pad=0)
    if d3:
        ax.set_box_aspect((1, 1, 1))
    else:
        ax.set_aspect("equal")

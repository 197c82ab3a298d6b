"""Figures drawn from a sweep or theory dataset (matplotlib, Agg backend, no numerics here
beyond averaging over starts and the theory overlays)."""

import contextlib
import contextvars
import dataclasses
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from .. import theory  # noqa: E402
from ._registry import FIELDS, FIGURES  # noqa: E402
from ._store import atomic_write  # noqa: E402
from ._style import style_params  # noqa: E402
from ._summarize import INNER_DIMS  # noqa: E402

DPI = 90


@dataclasses.dataclass(frozen=True)
class FigureFiles:
    """How `save_figure` writes a figure: one file per format, at `dpi`."""

    formats: tuple[str, ...] = ("png",)
    dpi: int = DPI


_FILES: contextvars.ContextVar[FigureFiles | None] = contextvars.ContextVar(
    "transformer_flows_figure_files", default=None
)


@contextlib.contextmanager
def figure_files(plot):
    """Draw under the `plot.format`, `plot.dpi` and `plot.style` of a config's `plot:` section
    (figures drawn inside are saved by `save_figure` accordingly)."""
    token = _FILES.set(FigureFiles(tuple(plot.format), plot.dpi))
    try:
        with plt.style.context(style_params(plot.style)):
            yield
    finally:
        _FILES.reset(token)


def draw_figures(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """Draw every figure listed in `config.figures` into `out` in the formats, resolution and
    style of `config.plot`; returns the written files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with figure_files(config.plot):
        for name in config.figures:
            written.extend(FIGURES[name].draw(dataset, config, out))
    return written


def _panels(dataset: xr.Dataset) -> list[tuple[str, xr.Dataset]]:
    """One panel per shape combination (and tolerance): (title, dataset with those dims dropped)."""
    axes = [dim for dim in dataset.dims if dim not in INNER_DIMS]
    panels = [("", dataset)]
    for dim in axes:
        size = dataset.sizes[dim]
        panels = [
            (_join(title, _label(dim, value, size)), part.sel({dim: value}))
            for title, part in panels
            for value in part[dim].values
        ]
    return panels


def _label(dim: str, value, size: int) -> str:
    if dim == "d":
        return f"d = {value}"
    if size == 1:
        return ""
    if dim == "weights":
        return str(value)
    return f"{dim} = {value:g}" if dim == "rtol" else f"{dim} = {value}"


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


def _grid(count: int, per_row: int, size=(4.2, 3.4)):
    cols = min(count, per_row)
    rows = -(-count // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def save_figure(fig, path: Path) -> list[Path]:
    """Write `fig` as `path` with each configured suffix (see `figure_files`), each file
    atomically (a Ctrl-C or crash leaves the previous file or none, never half a file), and
    close it; returns the written paths."""
    files = _FILES.get() or FigureFiles()
    written = []
    try:
        for suffix in files.formats:
            target = Path(path).with_suffix(f".{suffix}")
            atomic_write(
                target,
                lambda f, suffix=suffix: fig.savefig(
                    f, format=suffix, dpi=files.dpi, bbox_inches="tight"
                ),
            )
            written.append(target)
    finally:
        plt.close(fig)
    return written


def _subtitle(dataset: xr.Dataset, config) -> str:
    starts = dataset.sizes.get("start", 0)
    model = config.model
    text = f"{model.field}, n = {', '.join(map(str, model.n))}, {starts} starts per β"
    if "solver" in dataset.attrs:
        text += f"\n{dataset.attrs['solver']}"
    failed = int(dataset.attrs.get("failed_solves", 0))
    if failed:
        text += f"\n{failed} of {dataset.attrs['total_solves']} solves failed: excluded"
    return text + (" [smoke]" if dataset.attrs.get("smoke") else "")


def _theory_model(config) -> str | None:
    """The `theory` model of the config's field (Q = K = V = I), or None if it has none (a
    feed-forward term, model.feed_forward, leaves the theory of attention alone)."""
    if getattr(config.model, "feed_forward", None) is not None:
        return None
    return FIELDS.theory_model(config.model.field)


def _valid(part: xr.Dataset, name: str) -> xr.DataArray:
    """The observable with failed solves masked as NaN (floats are NaN already)."""
    return part[name].where(part["succeeded"])


def phase_boundary_curve(config, n: int, times: np.ndarray, betas: np.ndarray):
    """Γ∞,δ (6.12) for the config's model as a curve β(t) on a fine grid (theory for
    Q = K = V = I; the caller draws it on identity-weight panels only)."""
    fine_times = np.linspace(float(times.min()), float(times.max()), 300)
    fine_betas = np.linspace(float(betas.min()), float(betas.max()), 200)
    curve = theory.phase_boundary(
        fine_times, n, config.observables.delta, fine_betas, model=_theory_model(config)
    )
    return fine_times, np.asarray(curve)


def phase_diagram(dataset, config, out):
    panels = _panels(dataset)
    fig, axes = _grid(len(panels), config.plot.max_panels_per_row)
    image = None
    for ax, (title, part) in zip(axes, panels, strict=True):
        probability = part["clustered_fraction"].mean("start").transpose("beta", "time")
        times, betas = part["time"].values, part["beta"].values
        image = ax.pcolormesh(
            times, betas, probability.values, cmap="RdBu_r", vmin=0, vmax=1, shading="nearest"
        )
        values = probability.values
        if len(times) > 1 and len(betas) > 1 and values.min() < 0.5 < values.max():
            ax.contour(
                times,
                betas,
                probability.values,
                levels=[0.5],
                colors="0.3",
                linestyles="--",
                linewidths=1.0,
            )
        if str(part["weights"].values) == "identity" and len(betas) > 1 and _theory_model(config):
            curve_t, curve_beta = phase_boundary_curve(config, int(part["n"]), times, betas)
            ax.plot(curve_t, curve_beta, "k-", lw=1.6, label=r"$\Gamma_{\infty,\delta}$ (theory)")
        ax.set(
            title=title,
            xlabel="$t$",
            ylabel=r"$\beta$",
            xlim=(times.min(), times.max()),
            ylim=(betas.min(), betas.max()),
        )
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="lower right", fontsize=7, frameon=True)
    delta = config.observables.delta
    label = rf"$P(\langle x_i, x_j\rangle \geq 1-\delta)$, $\delta = {delta:g}$"
    fig.colorbar(image, ax=axes, label=label)
    fig.suptitle(
        f"{config.name}: {_subtitle(dataset, config)}\ndashed: empirical 50% level", fontsize=9
    )
    return save_figure(fig, out / f"{config.name}_phase_diagram.png")


def _snapshot_indices(dataset, config) -> list[int]:
    times = dataset["time"].values
    wanted = config.plot.snapshot_times or list(np.linspace(times[0], times[-1], 3))
    return [int(np.argmin(np.abs(times - t))) for t in wanted]


def _example(part: xr.Dataset, config) -> xr.Dataset:
    start = min(config.plot.example_start, part.sizes["start"] - 1)
    return part.isel(start=start)


def circle_snapshots(dataset, config, out):
    part = _panels(dataset)[0][1]
    columns = _snapshot_indices(part, config)
    betas = part["beta"].values[::-1]  # largest β on top, as in Fig. 4
    fig, axes = plt.subplots(
        len(betas),
        len(columns),
        figsize=(2.4 * len(columns), 2.6 * len(betas)),
        squeeze=False,
        layout="constrained",
    )
    circle = np.linspace(0, 2 * np.pi, 200)
    for row, beta in enumerate(betas):
        example = _example(part.sel(beta=beta), config)
        for col, index in enumerate(columns):
            ax = axes[row, col]
            x = example["positions"].isel(time=index).values
            ax.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1)
            ax.scatter(x[:, 0], x[:, 1], s=18, color="tab:red", zorder=3)
            title = rf"$\beta = {beta:g}$, $t = {part['time'].values[index]:.1f}$"
            if "cluster_count" in example:
                title += f"\n{int(example['cluster_count'].isel(time=index))} clusters"
            ax.set_title(title, fontsize=8)
            ax.set_aspect("equal")
            ax.axis("off")
    fig.suptitle(
        f"{config.name}: one trajectory per β (start {config.plot.example_start})\n"
        f"{_subtitle(dataset, config)}",
        fontsize=8,
    )
    return save_figure(fig, out / f"{config.name}_circle_snapshots.png")


def movie(dataset, config, out):
    from matplotlib.animation import FuncAnimation, PillowWriter

    part = _panels(dataset)[0][1].isel(beta=0)
    example = _example(part, config)
    positions = example["positions"].values
    times = part["time"].values
    frames = np.unique(np.linspace(0, len(times) - 1, config.plot.movie_frames).astype(int))
    fig = plt.figure(figsize=(3.2, 3.2))
    ax = fig.add_subplot(projection="3d")
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    points = ax.scatter(*positions[0].T, s=12, color="tab:red", depthshade=False)
    ax.set_axis_off()
    title = ax.set_title("", fontsize=8)
    beta = float(part["beta"])

    def update(frame):
        points._offsets3d = tuple(positions[frame].T)
        title.set_text(
            f"{config.model.field}, n = {positions.shape[1]}, β = {beta:g}, t = {times[frame]:.1f}"
        )
        return points, title

    animation = FuncAnimation(fig, update, frames=frames, blit=False)
    path = out / f"{config.name}_movie.gif"
    animation.save(path, writer=PillowWriter(fps=10), dpi=60)
    plt.close(fig)
    return [path]


def _normalized_energy(energy: xr.DataArray) -> xr.DataArray:
    """E_β(t) / E_β(consensus) from the saved rescaled energy e^{-β}E_β, whose consensus
    value is 1/(2β) (1/2 for the β = 0 limit)."""
    beta = energy["beta"]
    maximum = xr.where(beta > 0, 1 / (2 * beta.where(beta > 0, 1.0)), 0.5)
    return energy / maximum


def energy(dataset, config, out):
    panels = _panels(dataset)
    fig, axes = _grid(len(panels), config.plot.max_panels_per_row)
    colors = plt.cm.viridis(np.linspace(0, 0.9, dataset.sizes["beta"]))
    for ax, (title, part) in zip(axes, panels, strict=True):
        normalized = _normalized_energy(part["energy"])
        times = part["time"].values
        for color, beta in zip(colors, part["beta"].values, strict=True):
            curves = normalized.sel(beta=beta).transpose("start", "time").values
            for curve in curves[:8]:
                ax.plot(times, curve, color=color, lw=0.5, alpha=0.4)
            ax.plot(times, np.nanmean(curves, 0), color=color, lw=2, label=rf"$\beta = {beta:g}$")
        ax.set(
            title=title,
            xlabel="$t$",
            ylabel=r"$E_\beta(t)\,/\,E_\beta(\mathrm{consensus})$",
        )
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{config.name}: energy (thin: single starts, thick: mean)\n{_subtitle(dataset, config)}",
        fontsize=8,
    )
    return save_figure(fig, out / f"{config.name}_energy.png")


def cluster_staircase(dataset, config, out):
    written = []
    for title, part in _panels(dataset):
        has_energy = "energy" in part
        fig, axes = plt.subplots(
            1, 3 if has_energy else 2, figsize=(13 if has_energy else 9, 3.8), layout="constrained"
        )
        times = part["time"].values
        colors = plt.cm.plasma(np.linspace(0, 0.85, part.sizes["beta"]))
        d = int(part["d"])
        for color, beta in zip(colors, part["beta"].values, strict=True):
            counts = _valid(part, "cluster_count").sel(beta=beta).transpose("start", "time")
            with warnings.catch_warnings():  # times where every start failed stay gaps (NaN)
                warnings.simplefilter("ignore", RuntimeWarning)
                low, median, high = np.nanpercentile(counts.values, [10, 50, 90], axis=0)
            axes[0].fill_between(times, low, high, color=color, alpha=0.2, step="post")
            axes[0].step(
                times, median, where="post", color=color, lw=1.8, label=rf"$\beta = {beta:g}$"
            )
            if beta > 0 and _theory_model(config):
                mode = int(theory.selected_mode(float(beta), d, _theory_model(config)))
                axes[0].axhline(mode, color=color, ls=":", lw=1.2)
            example = _example(part.sel(beta=beta), config)
            axes[1].step(
                times,
                _valid(example, "cluster_count").values,
                where="post",
                color=color,
                label=rf"$\beta = {beta:g}$",
            )
            if has_energy:
                axes[2].plot(times, _normalized_energy(example["energy"]).values, color=color)
        axes[0].set(
            xlabel="$t$",
            ylabel="number of clusters",
            title=r"median and 10–90% over starts; dotted: $\ell^*(\beta)$",
        )
        axes[1].set(
            xlabel="$t$",
            ylabel="number of clusters",
            title=f"one start ({config.plot.example_start})",
        )
        for ax in axes[:2]:
            _count_axis(ax, int(part["n"]))
        axes[0].legend(fontsize=7)
        if has_energy:
            axes[2].set(
                xlabel="$t$",
                ylabel=r"$E_\beta\,/\,E_\beta(\mathrm{consensus})$",
                title="energy staircase (same start)",
            )
        fig.suptitle(f"{config.name} {title}: {_subtitle(dataset, config)}", fontsize=8)
        suffix = title.replace(" ", "").replace(",", "_").replace("=", "") or "all"
        written.extend(save_figure(fig, out / f"{config.name}_cluster_staircase_{suffix}.png"))
    return written


def _count_axis(ax, n: int) -> None:
    """Log scale with plain integer ticks 1, 2, 3, 4, 6, 8, 16, ... up to n."""
    ax.set_yscale("log")
    ticks = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256) if t <= n]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0.8, n * 1.15)


def _log_d_axis(ax, ds) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.minorticks_off()


def landscape(dataset, config, out):
    fig, axes = _grid(dataset.sizes["d"], config.plot.max_panels_per_row, size=(5, 3.6))
    tau = dataset["tau"].values
    for ax, d in zip(axes, dataset["d"].values, strict=True):
        for beta in dataset["beta"].values:
            (line,) = ax.plot(
                tau, dataset["landscape_g"].sel(d=d, beta=beta).values, label=rf"$\beta = {beta:g}$"
            )
            critical = float(dataset["critical_angle"].sel(d=d, beta=beta))
            for sign in (-1, 1):
                ax.axvline(sign * critical, color=line.get_color(), ls=":", lw=1)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(
            ylim=(-2.5, 7),
            xlabel=r"$\tau$",
            ylabel=r"$g(\tau)$",
            title=rf"$d = {d}$; dotted: $\pm\tau^*_\beta$",
        )
        ax.legend(fontsize=8)
    fig.suptitle(
        rf"{config.name}: $g(\tau) = e^{{\beta\cos\tau}}((d-1)\cos\tau - \beta\sin^2\tau)$ "
        "(App. B)",
        fontsize=9,
    )
    return save_figure(fig, out / f"{config.name}_landscape.png")


def regimes(dataset, config, out):
    n = int(dataset.attrs["n"])
    exact, printed = dataset.attrs["large_beta_threshold"], dataset.attrs["printed_threshold"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    ax = axes[0]
    top = 10 ** np.ceil(np.log10(exact * 3))
    ax.fill_between(
        [1.5, 2.5], 1e-2, 1, color="tab:green", alpha=0.6, label="proved single cluster"
    )
    ax.fill_between([1.5, 2.5], 1, exact, color="tab:red", alpha=0.6, label="open (Problem 3)")
    ax.fill_between([1.5, 2.5], exact, top, color="tab:green", alpha=0.6)
    ax.fill_between([2.5, 2 * n], 1e-2, top, color="tab:green", alpha=0.35)
    ax.fill_between(
        [n, 2 * n],
        1e-2,
        top,
        facecolor="none",
        hatch="//",
        edgecolor="0.3",
        lw=0.5,
        label="d ≥ n: exponential rate (Thm 6.3)",
    )
    ax.axhline(printed, xmin=0, xmax=0.2, color="k", ls="--", lw=1)
    ax.text(2.6, printed, f"printed n²/π² = {printed:.1f}", fontsize=7, va="bottom")
    ax.text(2.6, exact, f"exact β_B(n) = {exact:.1f}", fontsize=7, va="top")
    ax.text(4, 1, "Thm 6.1 (d ≥ 3, all β)", fontsize=8)
    ax.set(
        yscale="log",
        ylim=(1e-2, top),
        xlabel="$d$",
        ylabel=r"$\beta$",
        title=f"Fig. 2: proved regimes, n = {n}",
    )
    _log_d_axis(ax, sorted({2, 3, 4, 8, 16, n, 2 * n}))
    ax.set_xlim(1.5, 2 * n)
    ax.legend(fontsize=7, loc="lower right")
    axes[1].semilogy(dataset["d"].values, dataset["wendel_probability"].values, "o-")
    axes[1].set(
        xlabel="d", ylabel="P(all tokens in a hemisphere)", title=f"Wendel (Thm 6.7), n = {n}"
    )
    _log_d_axis(axes[1], list(dataset["d"].values))
    betas = dataset["beta"].values
    for model in ("SA", "USA"):
        axes[2].plot(betas, dataset[f"clustering_time_{model}"].values, label=model)
    axes[2].set(
        xlabel=r"$\beta$",
        ylabel=r"$t^*(\beta)$: $\gamma_\beta(t^*) = 1 - \delta$",
        yscale="log",
        title=f"fast ← clustering time → slow (δ = {dataset.attrs['delta']:g})",
    )
    axes[2].legend()
    return save_figure(fig, out / f"{config.name}_regimes.png")


def long_context(dataset, config, out):
    """One attention layer at β = γ log n on equiangular tokens (Chen–Lin–Polyanskiy–Rigollet):
    left, the output cosine against n with the n → ∞ limits dashed; right, the distance to
    the limit with the derived leading correction dotted (residual 0 only)."""
    rhos = dataset["rho"].values
    n = dataset["n_tokens"].values
    corrections = "long_context_correction" in dataset
    fig, axes = plt.subplots(
        len(rhos),
        2 if corrections else 1,
        figsize=(11, 3.8 * len(rhos)),
        squeeze=False,
        layout="constrained",
    )
    for row, rho in zip(axes, rhos, strict=True):
        critical = 1 / (1 - rho)
        for ratio in dataset["gamma_ratio"].values:
            part = dataset.sel(rho=rho, gamma_ratio=ratio)
            cosine = part["long_context_cosine"].values
            limit = float(part["long_context_limit"])
            label = f"γ = {ratio:g}·γ_c = {ratio * critical:.3g}"
            (line,) = row[0].semilogx(n, cosine, label=label)
            row[0].axhline(limit, color=line.get_color(), ls="--", lw=1)
            if corrections:
                row[1].loglog(n, np.abs(cosine - limit), color=line.get_color(), label=label)
                row[1].loglog(
                    n, np.abs(part["long_context_correction"].values), ":", color="k", lw=1
                )
        row[0].set(
            xlabel="n (tokens)",
            ylabel=r"output cosine $\langle\theta_i, \theta_j\rangle$",
            ylim=(min(0.0, rho - 0.05), 1.02),
            title=f"ρ = {rho:g}, γ_c = 1/(1−ρ) = {critical:.3g}; dashed: n → ∞ limits",
        )
        row[0].legend(fontsize=8)
        if corrections:
            row[1].set(
                xlabel="n (tokens)",
                ylabel=r"$|\mathrm{cosine} - \mathrm{limit}|$",
                ylim=(1e-12, 1.5),
                title="dotted: leading term n^(−2(1−κ)), 1/n, n^(−(κ−1)), κ = γ(1−ρ)",
            )
            row[1].legend(fontsize=8)
    residual = dataset.attrs.get("long_context_residual", 0.0)
    fig.suptitle(
        f"{config.name}: one attention layer at β = γ log n on equiangular tokens "
        f"(residual r = {residual:g})",
        fontsize=9,
    )
    return save_figure(fig, out / f"{config.name}_long_context.png")


_PLACEMENT_LABELS = {
    "post_ln": "Post-LN",
    "pre_ln": "Pre-LN",
    "peri_ln": "Peri-LN",
    "ngpt": "nGPT",
    "mix_ln": "Mix-LN",
    "no_norm": "no norm",
}


def placement_cosines(dataset, config, out):
    """Mean cosine ρ(t) (top) and 1 − ρ on log–log axes (bottom), one colour per placement,
    one column per start kind and weight ensemble: median over starts, 10–90% band."""
    data = dataset
    for dim, value in (("placement", config.model.placement[0]), ("initial", "sphere")):
        if dim not in data.dims:
            data = data.expand_dims({dim: [value]})
    columns = [
        (initial, weights, n, d)
        for n in data["n"].values
        for d in data["d"].values
        for weights in data["weights"].values
        for initial in data["initial"].values
    ]
    fig, axes = plt.subplots(
        2, len(columns), figsize=(4.2 * len(columns), 7), squeeze=False, layout="constrained"
    )
    times = data["time"].values
    colors = plt.cm.tab10(np.arange(data.sizes["placement"]))
    for col, (initial, weights, n, d) in enumerate(columns):
        top, bottom = axes[0, col], axes[1, col]
        for color, placement in zip(colors, data["placement"].values, strict=True):
            part = data.sel(initial=initial, weights=weights, n=n, d=d, placement=placement)
            for beta in part["beta"].values:
                rho = _valid(part.sel(beta=beta), "mean_cosine").transpose("start", "time").values
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    low, median, high = np.nanpercentile(rho, [10, 50, 90], axis=0)
                label = _PLACEMENT_LABELS.get(str(placement), str(placement))
                if part.sizes["beta"] > 1:
                    label += f", β = {beta:g}"
                top.fill_between(times, low, high, color=color, alpha=0.2)
                top.plot(times, median, color=color, lw=1.6, label=label)
                gap = np.clip(1 - median, 1e-16, None)
                later = times > 0
                bottom.loglog(times[later], gap[later], color=color, lw=1.6, label=label)
        guide = times[times > 0]
        if guide.size:
            anchor = guide[len(guide) // 2]
            bottom.loglog(
                guide, 0.5 * (anchor / guide) ** 2 * 1e-2, "k:", lw=1, label=r"$\propto t^{-2}$"
            )
        top.set(
            xlabel="t (layers × h)",
            ylabel=r"mean cosine $\rho$",
            ylim=(min(0.0, float(np.nanmin(data["mean_cosine"].values))), 1.02),
            title=f"{initial} start, weights {weights}\nn = {n}, d = {d}",
        )
        # Below ~10 float eps, 1 − ρ is rounding noise.
        floor = 1e-6 if config.precision == "float32" else 1e-14
        bottom.set(xlabel="$t$", ylabel=r"$1 - \rho$ (median over starts)", ylim=(floor, 2))
        top.legend(fontsize=7, loc="lower right")
        bottom.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{config.name}: normalisation placements\n{_subtitle(dataset, config)}", fontsize=9
    )
    return save_figure(fig, out / f"{config.name}_placement_cosines.png")


def renyi_centres(x: np.ndarray, delta: float) -> list[int]:
    """Rényi centres of tokens x (n, d) in token order (Karagodin–Polyanskiy–Rigollet,
    arXiv:2411.04990, Fig. 2): token 0 is a centre, and token k is a new centre when its
    Euclidean distance to every earlier centre exceeds δ (the greedy parking of the tokens
    in the order the causal mask reads them)."""
    centres: list[int] = []
    for k, point in enumerate(np.asarray(x)):
        if all(np.linalg.norm(point - x[c]) > delta for c in centres):
            centres.append(k)
    return centres


def causal_circle(dataset, config, out):
    """Angle of every token against time (colour: token index) for one start per β, with
    the Rényi centres of x(0) at δ = 4β^{-1/2} drawn in black (Karagodin et al., Fig. 2)."""
    part = _panels(dataset)[0][1]
    betas = part["beta"].values
    fig, axes = _grid(len(betas), 1, size=(8.0, 4.2))
    times = part["time"].values
    for ax, beta in zip(axes, betas, strict=True):
        example = _example(part.sel(beta=beta), config)
        x = example["positions"].values  # (time, particle, component)
        angles = np.arctan2(x[..., 1], x[..., 0])
        n = angles.shape[1]
        delta = 4 / np.sqrt(beta)
        centres = renyi_centres(x[0], delta)
        grid_t = np.broadcast_to(times[:, None], angles.shape)
        index = np.broadcast_to(np.arange(n)[None, :], angles.shape)
        points = ax.scatter(grid_t, angles, c=index, cmap="viridis", s=1.5, lw=0)
        ax.scatter(
            grid_t[:, centres], angles[:, centres], color="k", s=3, lw=0, label="Rényi centres"
        )
        ax.scatter(
            np.zeros(len(centres)), angles[0, centres], color="k", marker=">", s=30, zorder=3
        )
        title = (
            rf"$\beta = {beta:g}$, $\delta = 4\beta^{{-1/2}} = {delta:.2f}$: "
            f"{len(centres)} Rényi centres of $x(0)$"
        )
        if "cluster_count" in example:
            counts = example["cluster_count"].values
            title += f"; clusters at t = {times[-1]:g}: {int(counts[-1])}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("$t$")
        ax.set_ylabel("angle of $x_k(t)$")
        ax.set_ylim(-np.pi, np.pi)
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
        fig.colorbar(points, ax=ax, label="token index k")
    fig.suptitle(f"{config.name}: causal attention on the circle\n{_subtitle(dataset, config)}")
    return save_figure(fig, out / f"{config.name}_causal_circle.png")

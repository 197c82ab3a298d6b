"""The command line's smaller promises (issue 21 items 5, 6): index overrides, the changed-config
refusal naming the keys, `summarize --format table`, and figure files for papers (formats,
dpi, styles read as data). Nothing here compiles a solve."""

import re
import sys

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from transformer_flows.experiment import (
    ConfigError,
    RunDirectory,
    StoreError,
    load_config,
    summary_table,
)
from transformer_flows.experiment._config_diff import config_differences
from transformer_flows.experiment._plot import figure_files, save_figure

from helpers import SWEEP_CONFIGS

SPHERE = SWEEP_CONFIGS[0].parent / "sphere.yaml"  # sweep.beta: [1.0, 2.0, 4.0, 9.0]


def test_index_overrides_replace_one_entry():
    config = load_config(SPHERE, ["sweep.beta[2]=5.5", "sweep.beta[-1]=10"])
    assert config.sweep.beta == [1.0, 2.0, 5.5, 10.0]
    config = load_config(
        SPHERE.parent / "fit_two_clusters.yaml", ["task.anchors[1][2]=-0.5", "task.n=8"]
    )
    assert config.task.anchors == [[0, 0, 1], [0, 0, -0.5]]
    refusals = {
        "sweep.beta[4]=1": "index 4 is out of range for 'sweep.beta', a list of 4 entries",
        "time.t1[0]=1": "'time.t1' holds 15.0, not a list",
        "sweep[0].beta=1": "only the last key may carry an index",
        "sweep.beta[x]=1": "is not a key or key[index]",
        "sweep.beta[1]=null": "null cannot remove one entry of a list",
        "sweep.bta[0]=1": "unknown key 'sweep.bta'",
    }
    for override, message in refusals.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(SPHERE, [override])


def test_the_override_a_config_error_suggests_is_accepted():
    with pytest.raises(ConfigError) as error:
        load_config(SPHERE, ["sweep.beta=[1.0, x, 4.0]"])
    suggested = re.search(r"override it with `([^`=]+)=VALUE`", str(error.value))
    assert suggested is not None and suggested[1] == "sweep.beta[1]"
    fixed = load_config(SPHERE, ["sweep.beta=[1.0, x, 4.0]", f"{suggested[1]}=2.5"])
    assert fixed.sweep.beta == [1.0, 2.5, 4.0]


def test_changed_config_refusal_names_the_keys_that_differ(tmp_path):
    old, new = load_config(SPHERE), load_config(SPHERE, ["model.n=32", "solver.rtol=1e-8"])
    run = RunDirectory(tmp_path / "run")
    with run.lock():
        run.claim(old.to_yaml(), "a" * 64)
    before = (tmp_path / "run" / "config.yaml").read_bytes()
    with run.lock(), pytest.raises(StoreError) as error:
        run.claim(new.to_yaml(), "b" * 64)
    message = str(error.value)
    assert "It differs in: " in message
    assert "model.n: [64] → [32]" in message and "solver.rtol: 1e-06 → 1e-08" in message
    assert (tmp_path / "run" / "config.yaml").read_bytes() == before  # nothing overwritten
    assert config_differences("a: 1\nb: {c: 2}\n", "a: 1\nb: {c: 3, d: x}\n") == [
        "b.c: 2 → 3",
        "b.d: (absent) → 'x'",
    ]
    assert config_differences("a: [", "a: 1") == []  # unreadable: no claim about keys


def test_summary_table_is_aligned_and_carries_the_numbers():
    result = {
        "name": "demo",
        "failed_solves": 0,
        "compute_seconds": 12.3456789,
        "phase_levels": [
            {"n": 32, "t": 15.0, "beta_empirical": 3.14159, "beta_ci95": [2.5, None]},
            {"n": 128, "t": 30.0, "beta_empirical": None, "beta_ci95": None},
        ],
    }
    lines = summary_table(result).splitlines()
    assert lines[:3] == ["name: demo", "failed_solves: 0", "compute_seconds: 12.35"]
    header = lines.index("phase_levels:") + 1
    rows = lines[header : header + 4]
    assert rows[0].split() == ["n", "t", "beta_empirical", "beta_ci95"]
    assert set(rows[1].replace(" ", "")) == {"-"}
    assert rows[2].split() == ["32", "15", "3.142", "[2.5,", "-]"]
    assert rows[3].split() == ["128", "30", "-", "-"]
    assert len({len(row) for row in rows}) == 1  # every column right-aligned to one width


class _Plot:
    def __init__(self, format=("png",), dpi=90, style=None):
        self.format, self.dpi, self.style = list(format), dpi, style


def _figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1], label=r"$\beta = 4$")
    ax.set(xlabel="$t$", ylabel=r"$E_\beta(t)$")
    ax.legend()
    return fig


def test_figures_in_every_format_and_dpi(tmp_path):
    with figure_files(_Plot(("png", "pdf", "svg"), dpi=200)):
        written = save_figure(_figure(), tmp_path / "energy.png")
    assert [p.name for p in written] == ["energy.png", "energy.pdf", "energy.svg"]
    assert (tmp_path / "energy.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "energy.svg").read_bytes()[:2000]
    with figure_files(_Plot(dpi=50)):
        (small,) = save_figure(_figure(), tmp_path / "small.png")
    # Same figure, tight bounding box: the pixel size scales with the dpi (200 / 50 = 4).
    big_shape = matplotlib.image.imread(tmp_path / "energy.png").shape
    small_shape = matplotlib.image.imread(small).shape
    assert big_shape[1] / small_shape[1] == pytest.approx(4, rel=0.05)
    assert not list(tmp_path.glob("*.tmp-*"))  # every file renamed into place


def test_config_keys_of_figure_files(tmp_path):
    config = load_config(SPHERE, ["plot.format=[pdf, svg]", "plot.dpi=300", "plot.style=ggplot"])
    assert config.plot.format == ["pdf", "svg"] and config.plot.dpi == 300
    assert load_config(SPHERE, ["plot.format=pdf"]).plot.format == ["pdf"]
    # Presentation only: a rerun with other figure settings resumes the same numbers.
    assert config.numerics() == load_config(SPHERE).numerics()
    for override, message in {
        "plot.format=jpeg": "plot.format",
        "plot.format=[png, png]": "formats must be distinct",
        "plot.dpi=0": "plot.dpi",
        "plot.style=no-such-style": "neither a matplotlib style name nor a path",
    }.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(SPHERE, [override])


def test_style_files_are_data_and_dotted_names_import_nothing(tmp_path, monkeypatch):
    style = tmp_path / "paper.mplstyle"
    style.write_text("lines.linewidth: 7.5\naxes.facecolor: 0.25\n")
    monkeypatch.chdir(tmp_path)
    with figure_files(_Plot(style="paper.mplstyle")):
        assert matplotlib.rcParams["lines.linewidth"] == 7.5
        save_figure(_figure(), tmp_path / "styled.png")
    assert matplotlib.rcParams["lines.linewidth"] != 7.5  # restored afterwards
    # matplotlib's style.use("pkg.name") would import `pkg`: here such a name is refused first.
    (tmp_path / "evilstyle.py").write_text("import sys\nsys.modules['__main__'].OWNED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="neither a matplotlib style name"):
        load_config(SPHERE, ["plot.style=evilstyle.paper"])
    assert "evilstyle" not in sys.modules
    # LaTeX is an external program: a style may not switch it on.
    (tmp_path / "tex.mplstyle").write_text("text.usetex: True\n")
    with pytest.raises(ValueError, match=r"sets \['text.usetex'\]"):
        with figure_files(_Plot(style="tex.mplstyle")):
            pass
    with pytest.raises(ValueError, match="is not a file"):
        with figure_files(_Plot(style="missing.mplstyle")):
            pass
    assert np.isfinite(matplotlib.rcParams["lines.linewidth"])


def test_plot_and_summarize_of_a_fit_directory_import_nothing(tmp_path, capsys):
    from transformer_flows.cli import main

    fit = tmp_path / "fit"
    fit.mkdir()
    text = (SPHERE.parent / "fit_two_clusters.yaml").read_text()
    (fit / "config.yaml").write_text(text)
    for command in ("plot", "summarize"):
        assert main([command, str(fit)]) == 2
        assert "the fit has not finished" in capsys.readouterr().err
    (fit / "metrics.json").write_text("{}")
    (fit / "params.eqx").write_bytes(b"")
    (fit / "config.yaml").write_text(text.replace("field: SA ", "field: fitcodemod:Field "))
    for command in ("plot", "summarize"):
        assert main([command, str(fit)]) == 2
        assert "this fit names code (model.field: 'fitcodemod:Field')" in capsys.readouterr().err
    assert "fitcodemod" not in sys.modules


def test_draw_figures_follows_the_plot_section(tmp_path):
    """A real figure (Fig. 6's landscape, from a dataset built here with g(τ) of App. B) in
    every configured format, at the configured dpi, under a library style."""
    import xarray as xr

    from transformer_flows.experiment import draw_figures

    config = load_config(
        SPHERE.parent / "figure6.yaml",
        ["plot.format=[png, pdf, svg]", "plot.dpi=60", "plot.style=ggplot"],
    )
    tau, beta, d = np.linspace(-3, 3, 41), np.array([2.0, 6.0]), np.array([2])
    b, t = beta[:, None], tau[None, :]
    g = np.exp(b * np.cos(t)) * ((d[0] - 1) * np.cos(t) - b * np.sin(t) ** 2)
    critical = np.arccos((-1 + np.sqrt(1 + 4 * beta**2)) / (2 * beta))  # β sin² τ* = cos τ*
    dataset = xr.Dataset(
        {
            "landscape_g": (("d", "beta", "tau"), g[None]),
            "critical_angle": (("d", "beta"), critical[None]),
        },
        coords={"d": d, "beta": beta, "tau": tau},
    )
    written = draw_figures(dataset, config, tmp_path)
    assert [p.name for p in written] == [f"figure6_landscape.{s}" for s in ("png", "pdf", "svg")]
    png = matplotlib.image.imread(written[0])
    # The default config draws at dpi 90: the same figure is 90/60 times as wide.
    (wide,) = draw_figures(dataset, load_config(SPHERE.parent / "figure6.yaml"), tmp_path / "w")
    assert matplotlib.image.imread(wide).shape[1] / png.shape[1] == pytest.approx(90 / 60, rel=0.05)
    assert b"<svg" in written[2].read_bytes()[:2000] and written[1].read_bytes()[:4] == b"%PDF"

"""The `pretrained` experiment kind: its config schema, a run on a tiny random checkpoint (the
dataset equals the statistics of each source's states, resume, refusal of another config),
checks that need the model, and the message when the checkpoint is missing."""

import re

import diffrax
import numpy as np
import pytest
import xarray as xr

import transformer_flows as tf
from transformer_flows.cli import EXIT_MISSING_CHECKPOINT, main
from transformer_flows.experiment import (
    ConfigError,
    StoreError,
    config_from_dict,
    load_config,
    run_pretrained,
)

from helpers import PRETRAINED_CONFIGS, RandomStatesModel, hidden_statistics_reference

FIG1 = next(path for path in PRETRAINED_CONFIGS if path.stem == "pretrained_albert_fig1")


def _raw(**changes):
    raw = {"experiment": "pretrained", "checkpoint": "nowhere", "texts": ["one two three"]}
    raw.update(changes)
    return {key: value for key, value in raw.items() if value is not None}


def test_shipped_config_reads_as_the_paper_asks():
    config = load_config(FIG1)
    assert config.experiment == "pretrained" and config.layers == 48
    assert list(config.compare) == ["model", "discrete_map", "flow"]
    assert config.flow.t_max > config.layers
    assert {0, 1, 21, 24, 25, 48} <= set(config.plot.histogram_layers)
    assert set(config.statistics) >= {"mean_cosine", "centred_cosine", "effective_rank"}
    smoke = load_config(FIG1, smoke=True)
    assert smoke.layers == 4 and smoke.flow.t_max is None
    # Presentation is not numerics: a rerun may change the panels and still resume.
    again = load_config(FIG1, ["plot.histogram_layers=[0, 48]"])
    assert again.numerics() == config.numerics()
    assert load_config(FIG1, ["histogram.bins=10"]).numerics() != config.numerics()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"texts": None}, "`texts`.*either as `texts`.*or as `text_file`.*not neither"),
        ({"text_file": "a.txt"}, "`texts`.*not both"),
        ({"texts": ["  "]}, "`texts`: got.*non-blank"),
        ({"compare": ["model", "modle"]}, r"`compare\[1\]`: got 'modle'.*'discrete_map'"),
        ({"compare": ["flow", "flow"]}, "`compare`.*repeated"),
        ({"statistics": ["positions"]}, "`statistics`.*'positions' is not a scalar.*choose among"),
        ({"statistics": ["nope"]}, "`statistics`.*unknown observable 'nope'; registered"),
        ({"layers": 4, "flow": {"t_max": 3.0}}, "`flow.t_max`.*must exceed layers = 4"),
        ({"compare": ["model"], "flow": {"t_max": 9.0}}, "`flow.t_max`.*needs 'flow'"),
        ({"histogram": {"bins": 1}}, "`histogram.bins`: got 1"),
        ({"delta": 2.5}, "`delta`: got 2.5"),
        ({"chekpoint": "x"}, "`chekpoint`: unknown key.*checkpoint"),
        ({"checkpoint": None}, "`checkpoint`: is required"),
        ({"figures": ["phase_diagram"]}, "draws simulation runs; a pretrained experiment draws"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(changes, message):
    with pytest.raises(ConfigError, match=re.compile(message, re.S)):
        config_from_dict(_raw(**changes))


def test_text_file_is_read_per_line_and_a_missing_one_is_named(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first text here\n\n  second one  \n", encoding="utf-8")
    config = config_from_dict(_raw(texts=None, text_file=str(path)))
    assert config.read_texts() == ["first text here", "second one"]
    missing = config_from_dict(_raw(texts=None, text_file=str(tmp_path / "none.txt")))
    with pytest.raises(ConfigError, match="`text_file`: cannot read .*none.txt"):
        missing.read_texts()


# --- runs on a tiny random ALBERT (built offline by tests/pretrained_models.py) -------------


@pytest.fixture(scope="module")
def albert(tmp_path_factory):
    pytest.importorskip("transformers")
    from pretrained_models import tiny_checkpoint

    return tiny_checkpoint("albert", tmp_path_factory.mktemp("albert"))


SMOKE = ["--smoke", "--no-progress", "flow.t_max=6.5", "flow.tail_num=2"]


def test_missing_checkpoint_says_what_to_download(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(FIG1), "--out", str(out), "--no-progress"]) == EXIT_MISSING_CHECKPOINT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "albert-xlarge-v2" in err and "checkpoints/albert-xlarge-v2" in err
    assert not out.exists()  # refused before anything was written


def test_run_equals_the_statistics_of_each_sources_states(albert, tmp_path, capsys):
    out = tmp_path / "run"
    # Figures are drawn by tests/test_contracts.py (from stand-in states; the same dataset).
    argv = ["run", str(FIG1), "--out", str(out), *SMOKE, f"checkpoint={albert}", "--no-figures"]
    assert main(argv) == 0
    assert "pretrained_albert_fig1: dataset" in capsys.readouterr().out
    dataset = xr.open_dataset(out / "dataset.nc", engine="h5netcdf").load()
    config = load_config(FIG1, [*SMOKE[2:], f"checkpoint={albert}"], smoke=True)
    model = tf.pretrained.load_pretrained(albert)
    assert dataset.attrs["family"] == "albert" and dataset.attrs["smoke"] == 1
    assert list(dataset["source"].values) == ["model", "discrete_map", "flow"]
    grid = dataset["layer"].values
    np.testing.assert_array_equal(grid[:5], [0, 1, 2, 3, 4])  # smoke: 4 layers
    np.testing.assert_allclose(grid[5:], [4 * (6.5 / 4) ** 0.5, 6.5])  # geometric tail
    assert dataset.sizes == {"source": 3, "text": 2, "layer": 7, "bin": 20, "bin_edge": 21}
    edges = np.linspace(-1, 1, 21)
    # As the config's flow.solver says: tsit5, rtol = atol = 1e-5.
    flow_options = dict(solver=diffrax.Tsit5(), rtol=1e-5, atol=1e-5, max_steps=16384)
    assert config.flow.solver.name == "tsit5" and config.flow.solver.rtol == 1e-5
    for t, text in enumerate(config.read_texts()):
        with pytest.warns(UserWarning, match="truncated from"):
            ids = np.asarray(model.tokenize(text, truncate=True))[:12]
        assert dataset["num_tokens"][t] == len(ids) == 12
        states = {
            "model": model.hidden_states(ids, num_layers=4),
            "discrete_map": model.discrete_map_states(ids, num_layers=4),
            "flow": model.flow_states(ids, grid, num_layers=7, **flow_options),
        }
        for source, x in states.items():
            got = dataset.sel(source=source, text=t)
            for layer, state in enumerate(np.asarray(x, dtype=float)):
                expected = hidden_statistics_reference(
                    state, delta=config.delta, beta=config.beta, edges=edges
                )
                for name, value in expected.items():
                    np.testing.assert_allclose(
                        got[name][layer], value, rtol=1e-4, atol=1e-5, err_msg=f"{source} {name}"
                    )
            if source != "flow":  # no states at the flow's tail times
                assert x.shape[0] == 5 and np.isnan(got["mean_cosine"][5:]).all()
    # Rerunning resumes: nothing recomputed, the same dataset.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("chunks/*/*.nc")}
    assert len(stamps) == 2
    again = run_pretrained(config, out, progress=False, model=model)
    assert {p: p.stat().st_mtime_ns for p in out.glob("chunks/*/*.nc")} == stamps
    xr.testing.assert_identical(again.drop_attrs(), dataset.drop_attrs())
    # Another config in the same directory is refused before anything is computed.
    changed = config.model_copy(update={"delta": 0.1})
    with pytest.raises(StoreError, match="holds a run of a different config"):
        run_pretrained(changed, out, progress=False, model=model)


class BertLike(RandomStatesModel):
    family, num_layers = "bert", 3


@pytest.mark.parametrize(
    "changes, model, message",
    [
        ({"layers": 4}, BertLike(), "`layers`: got 4; this bert checkpoint has 3 layers"),
        ({"flow": {"t_max": 9.0}}, BertLike(), "`flow.t_max`: .*repeats a shared layer"),
        ({"flow": {"t_max": 2.0}}, RandomStatesModel(), "`flow.t_max`: got 2.0.*depth 2"),
        ({"plot": {"histogram_layers": [9]}}, BertLike(), "`plot.histogram_layers`: layer 9"),
        ({"texts": ["word"]}, RandomStatesModel(), "`texts`: 'word' has 1 token"),
    ],
)
def test_checks_that_need_the_model_come_before_any_output(tmp_path, changes, model, message):
    with pytest.raises(ConfigError, match=re.compile(message, re.S)):
        run_pretrained(config_from_dict(_raw(**changes)), tmp_path / "run", model=model)
    assert not (tmp_path / "run").exists()

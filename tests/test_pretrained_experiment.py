"""The `pretrained` experiment kind: its config schema, a run on a tiny random checkpoint (the
dataset equals the statistics of the model's own states, resume, refusal of another config,
figures), and the message when the checkpoint is missing."""

import re

import pytest

from transformer_flows.experiment import ConfigError, config_from_dict, load_config

from helpers import PRETRAINED_CONFIGS

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

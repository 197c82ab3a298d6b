"""`import transformer_flows` loads the engine only; the experiment layer and the checkpoint
reader load on first use."""

import subprocess
import sys

HEAVY = ("xarray", "pydantic", "yaml", "h5netcdf", "h5py", "safetensors", "tokenizers")


def test_import_loads_the_engine_only():
    code = (
        "import sys\n"
        "import transformer_flows as tf\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "assert 'transformer_flows.experiment' not in sys.modules\n"
        "tf.experiment.load_config\n"  # first use loads it
        "print('xarray' in sys.modules, callable(tf.pretrained.load_pretrained))\n"
        "assert 'experiment' in dir(tf)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split("\n")[:2] == ["[]", "True True"]


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    import transformer_flows as tf

    with pytest.raises(AttributeError, match="no attribute 'experimentt'"):
        tf.experimentt  # noqa: B018

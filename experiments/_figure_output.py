"""Where the atlas scripts put their results: the figure (PNG) and its numbers (JSON) beside it."""

import json
from pathlib import Path


def write_figure(fig, out: Path, numbers) -> None:
    """Save `fig` to `out` and `numbers` to `out` with a .json suffix (a reader can re-plot or
    quote the digits without rerunning)."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=1))
    print("wrote", out)

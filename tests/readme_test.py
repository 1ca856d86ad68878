"""The README's example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- example:start -->\s*```python\n(.*?)```\s*<!-- example:end -->", text, re.S)
    assert block, "README lost its example markers"
    exec(compile(block.group(1), str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    sparsity = float(re.search(r"hard sparsity ([0-9.]+)", out).group(1))
    assert abs(sparsity - 0.5) <= 0.03
    assert "speedup x" in out

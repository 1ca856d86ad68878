"""Reading a run directory (eval, report, shrink's input) creates nothing, even where there is nothing to read."""

import pytest

from flaxprune.training import runs


@pytest.mark.parametrize(
    "call",
    [
        lambda p: runs.report_checkpoint(p),
        lambda p: runs.load_run(p),
        lambda p: runs.evaluate_run(p, "valid", reduced=True),
        lambda p: runs.evaluate_run(p, "valid"),
    ],
)
def test_a_missing_run_is_one_error_and_no_directory(tmp_path, call):
    missing = tmp_path / "nonexistent"
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        call(missing)
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []

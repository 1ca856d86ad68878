"""An experiment's results files: the table is rewritten on every run, the hand-written notes are kept."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # the scripts' own folder, as when they run

from results_files import NOTES, command_line, write_results  # noqa: E402


def test_rewrites_the_table_and_keeps_the_notes(tmp_path):
    write_results(tmp_path / "r", "study", "python experiments/x.py --a=1", [{"run": "a"}], ["# table", "| a |"])
    md = tmp_path / "r" / "study.md"
    assert md.read_text() == "# table\n| a |\n"
    assert json.loads((tmp_path / "r" / "study.json").read_text()) == {
        "command": "python experiments/x.py --a=1", "rows": [{"run": "a"}]
    }
    md.write_text(md.read_text() + f"\n{NOTES}\n\n## Discussion\n\nby hand\n")
    write_results(tmp_path / "r", "study", "cmd", [{"run": "b"}], ["# table", "| b |"])
    assert md.read_text() == f"# table\n| b |\n\n{NOTES}\n\n## Discussion\n\nby hand\n"


def test_command_line_cites_the_script_and_its_arguments():
    got = command_line("enwik6.py", ["--steps=3", "--workdir=/tmp/w"])
    assert got == "python experiments/enwik6.py --steps=3 --workdir=/tmp/w"

"""The ``flaxprune`` command's help, version, dispatch and usage errors; nothing here trains.

Every ``cli.main`` call parses into absl's global FLAGS after ``unparse_flags()``, so these tests pass in any
order and alongside ``experiments_test.py``'s real runs.
"""

import dataclasses
import pathlib
import subprocess
import sys

import pytest

import flaxprune as fp
from flaxprune import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = list(cli.COMMANDS)


def _refuse_to_run():
    raise AssertionError("--help started the command")


@pytest.fixture
def no_work(monkeypatch):
    """Every command's function fails the test if called: help must not start any work."""
    for name, command in cli.COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, dataclasses.replace(command, run=_refuse_to_run))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("help_arg", ["--help", "-h", "--helpfull"])
def test_command_help_lists_its_flags_and_examples(name, help_arg, capsys, no_work):
    assert cli.main([name, help_arg]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"flaxprune {name}: {cli.COMMANDS[name].summary}"
    assert any(line.startswith(f"usage: flaxprune {name} ") for line in lines)
    for arg in cli.COMMANDS[name].args:
        flag_line = next(line for line in lines if line.strip().startswith(arg.usage()))
        assert f"--{arg.name}" in flag_line or f"--[no]{arg.name}" in flag_line
        assert cli.FLAGS[arg.name].help.split(": ")[-1] in flag_line  # the absl flag's text, less any enum prefix
        assert ("(required)" in flag_line) == arg.required
    examples = [line.strip() for line in lines[lines.index("examples:") + 1 :]]
    assert examples and all(example.startswith(f"flaxprune {name} --") for example in examples)


def test_train_help_explains_resuming_and_overrides(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Rerunning the same command resumes" in out
    assert "--config.SECTION.FIELD=VALUE" in out and "--config.prune.target=0.8" in out


@pytest.mark.parametrize("name", NAMES)
def test_help_anywhere_in_the_arguments_reads_and_writes_nothing(name, tmp_path, capsys, no_work):
    argv = [name, f"--config={tmp_path / 'missing.py'}", f"--workdir={tmp_path / 'run'}", "--bogus", "--help"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"flaxprune {name}: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_overview_lists_every_command(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS.values():
        assert f"  {command.name}" in out and command.summary in out
    assert "flaxprune <command> --help for more" in out


def test_no_arguments_prints_the_overview_and_fails(capsys):
    assert cli.main([]) == 2
    assert "flaxprune <command> --help for more" in capsys.readouterr().err


def test_unknown_command_is_one_line_naming_it_and_the_known_ones(capsys):
    assert cli.main(["nonsense"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "'nonsense'" in err
    assert all(name in err for name in NAMES)


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flaxprune {fp.__version__}"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--workdir={tmp}/run"], "missing required flag(s): --config"),
        (["train", "--config={tmp}/missing.py", "--workdir={tmp}/run"], "cannot load the --config file"),
        (["eval"], "missing required flag(s): --workdir"),
        (["eval", "--workdir={tmp}/run", "--split=train"], "--split=train: value should be one of <valid|test>"),
        (["eval", "--workdir={tmp}/run", "--output={tmp}/small"], "--output is not a flag of eval"),
        (["shrink", "--workdir={tmp}/run"], "missing required flag(s): --output"),
        (["report"], "missing required flag(s): --checkpoint"),
        (["report", "{tmp}/run"], "unexpected argument(s)"),
        (["report", "--bogus"], "Unknown command line flag 'bogus'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys, no_work):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"flaxprune {argv[0]}: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_the_module_runs_as_a_script_and_help_imports_no_training_code():
    # -X importtime lists every module the interpreter imports (on stderr).
    command = [sys.executable, "-X", "importtime", "-m", "flaxprune.cli", "train", "--help"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("flaxprune train: ")
    assert "flaxprune.training" not in done.stderr

"""The ``flaxprune`` command's help, version, dispatch and usage errors; nothing here trains.

Every ``cli.main`` call parses into absl's global FLAGS after ``unparse_flags()``, so these tests pass in any
order and alongside ``experiments_test.py``'s real runs.
"""

import dataclasses
import json
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
        (["report"], "give one of --checkpoint=DIR or --config=FILE"),
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


# --- Bad inputs to a command: one line on stderr, exit 1 (--debug: the traceback) ----------------------

CONFIG_FILE = REPO / "experiments" / "configs" / "sru_small.py"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--workdir={tmp}/nonexistent"], "is not a flaxprune run directory"),
        (["eval", "--workdir={tmp}/nonexistent", "--split=test", "--reduced"], "{tmp}/nonexistent"),
        (["report", "--checkpoint={tmp}/nonexistent"], "{tmp}/nonexistent"),
        (["shrink", "--workdir={tmp}/nonexistent", "--output={tmp}/small"], "{tmp}/nonexistent"),
        (
            # text files from a manual dir that holds none of them: load_corpus names the dir
            ["train", f"--config={CONFIG_FILE}", "--workdir={tmp}/run", "--config.data.name=text_char",
             "--config.data.manual_dir={tmp}/empty", "--config.data.data_dir={tmp}/tfds"],
            "{tmp}/empty",
        ),
        (["train", f"--config={CONFIG_FILE}", "--workdir={tmp}/run", "--config.optim.learning_rate=inf"],
         "config.optim.learning_rate=inf"),
    ],
)
def test_command_errors_are_one_line_and_exit_1(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err and "\n" not in err, captured.err
    assert err.startswith(f"flaxprune {argv[0]}: ") and message.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written: no run dir, no data dir


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_lets_the_error_propagate(how, tmp_path, monkeypatch, capsys):
    argv = ["report", f"--checkpoint={tmp_path / 'nonexistent'}"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        cli.main(argv)


def test_debug_env_off_values_keep_the_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert cli.main(["report", f"--checkpoint={tmp_path / 'nonexistent'}"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def _raising(error):
    def run():
        raise error

    return run


@pytest.mark.parametrize(
    "error,status,line",
    [
        (KeyboardInterrupt(), 130, "flaxprune report: interrupted"),
        (FloatingPointError("the loss became non-finite at step 4"), 1, "flaxprune report: the loss became non-finite"),
        (PermissionError(13, "Permission denied", "/x/run"), 1, "flaxprune report: [Errno 13] Permission denied"),
        (ValueError("line one\nline two"), 1, "flaxprune report: line one\nline two"),  # kept as it is
    ],
)
def test_command_error_kinds(error, status, line, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "report", dataclasses.replace(cli.COMMANDS["report"], run=_raising(error)))
    assert cli.main(["report", "--checkpoint=/x"]) == status
    err = capsys.readouterr().err
    assert err.startswith(line) and "Traceback" not in err, err
    with pytest.raises(type(error)):
        cli.main(["report", "--checkpoint=/x", "--debug"])


def test_non_finite_loss_error_is_one_line(monkeypatch, capsys):
    from flaxprune.training.loop import NonFiniteLossError

    error = NonFiniteLossError("the loss became non-finite at step 4; the last good checkpoint is intact.")
    monkeypatch.setitem(cli.COMMANDS, "train", dataclasses.replace(cli.COMMANDS["train"], run=_raising(error)))
    assert cli.main(["train", f"--config={CONFIG_FILE}", "--workdir=/x"]) == 1
    assert capsys.readouterr().err == f"flaxprune train: {error}\n"


def test_every_command_takes_and_documents_debug(capsys, no_work):
    for name, command in cli.COMMANDS.items():
        assert "debug" in [a.name for a in command.args]
        assert cli.main([name, "--help"]) == 0
        assert "--[no]debug" in capsys.readouterr().out


# --- Config files that do not load, keys the config lacks: one line, exit 2 ---------------------------

BAD_CONFIGS = {
    "syntax.py": ("def get_config(:\n", "SyntaxError: invalid syntax ({dir}/syntax.py, line 1)"),
    "raises.py": ("def get_config():\n    raise ValueError('boom')\n", "ValueError: boom ({dir}/raises.py, line 2)"),
    "name.py": ("def get_config():\n    return undefined\n", "NameError: name 'undefined' is not defined"),
    "none.py": ("def get_config():\n    return None\n", "get_config() returned None"),
    "chain.py": (
        "from flaxprune.training.config import load_config_file\n\n"
        "def get_config():\n    return load_config_file('{dir}/missing_base.py')\n",
        "load_config_file: no config file at {dir}/missing_base.py.",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
@pytest.mark.parametrize("overrides", [[], ["--config.train.steps=3"]])
def test_a_config_file_that_does_not_load_is_one_line(name, overrides, tmp_path, capsys, no_work):
    text, message = BAD_CONFIGS[name]
    (tmp_path / name).write_text(text.format(dir=tmp_path))
    assert cli.main(["train", f"--config={tmp_path / name}", f"--workdir={tmp_path / 'run'}", *overrides]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, captured.err
    assert err.startswith("flaxprune train: cannot load the --config file: ") and message.format(dir=tmp_path) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "--config.train.stepz=3",
            "--config.train.stepz names a key the config lacks ('stepz'; did you mean 'steps'?)",
        ),
        (
            "--config.trainz.steps=3",
            "--config.trainz.steps names a key the config lacks ('trainz'; did you mean 'train'?)",
        ),
    ],
)
def test_an_unknown_config_key_is_one_clean_line(override, message, tmp_path, capsys, no_work):
    assert cli.main(["train", f"--config={CONFIG_FILE}", f"--workdir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert err == f"flaxprune train: {message}; the config file lists the accepted keys.\n", err


def test_shrink_overwrite_and_train_allow_config_change_reach_the_library(tmp_path, monkeypatch, capsys):
    from flaxprune.training import loop, runs

    seen = {}
    monkeypatch.setattr(runs, "shrink_run", lambda w, o, overwrite=False: seen.update(shrink=overwrite) or (2, 1))
    monkeypatch.setattr(loop, "train", lambda c, w, allow_config_change=False: seen.update(train=allow_config_change)
                        or {"status": "done"})
    config = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "sru_small.py"
    assert cli.main(["shrink", f"--workdir={tmp_path}", f"--output={tmp_path / 'o'}", "--overwrite"]) == 0
    assert cli.main(["train", f"--config={config}", f"--workdir={tmp_path / 'w'}", "--allow_config_change"]) == 0
    assert seen == {"shrink": True, "train": True}
    assert cli.main(["shrink", f"--workdir={tmp_path}", f"--output={tmp_path / 'o'}"]) == 0
    assert seen["shrink"] is False


def test_a_workdir_in_use_is_one_line(tmp_path, capsys):
    from flaxprune.training.run_dir import RunLock

    config = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "sru_small.py"
    with RunLock(tmp_path):
        assert cli.main(["train", f"--config={config}", f"--workdir={tmp_path}", "--config.train.steps=2"]) == 1
        capsys.readouterr()  # the same override twice in one process: no clash of config_flags' flags
        tiny = ["--config.train.steps=2", "--config.train.seq_len=16", "--config.train.batch_size=4",
                "--config.train.eval_batch_size=2", "--config.model.d_model=16", "--config.model.rank=4",
                f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.max_bytes=20000"]
        status = cli.main(["train", f"--config={config}", f"--workdir={tmp_path}", *tiny])
    err = capsys.readouterr().err
    assert status == 1 and "is in use by process" in err and "Traceback" not in err, err


# --- bench: the speed suite ----------------------------------------------------------------------------


def _no_suite(*args, **kwargs):
    raise AssertionError("the suite ran despite a bad flag")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--levels=0.5,1.5"], "--levels=0.5,1.5 is not accepted; accepted: comma-separated sparsities in (0, 1)"),
        (["--models=sru,lstm"], "--models=sru,lstm is not accepted; accepted: a comma-separated subset of sru,txl"),
        (["--batches=8,x"], "--batches=8,x is not accepted; accepted: comma-separated integers"),
        (["--seqs=600"], "--seqs=600 is not accepted; accepted: lengths <= 512 with bert among --models"),
        (["--repeats=0"], "--repeats=0 is not accepted; accepted: an integer >= 1"),
        (["--repeats=many"], "flag --repeats=many"),
        (["--size=huge"], "--size=huge: value should be one of <full|small|tiny>"),
        (["--dtype=float16"], "--dtype=float16: value should be one of <float32|bfloat16>"),
        (["--workdir={tmp}/run"], "--workdir is not a flag of bench"),
    ],
)
def test_bench_bad_flags_are_one_line_exit_2_before_anything_runs(argv, message, tmp_path, monkeypatch, capsys):
    from flaxprune import benchmark

    monkeypatch.setattr(benchmark, "run", _no_suite)
    argv = ["bench", *(arg.format(tmp=tmp_path) for arg in argv), f"--output={tmp_path / 'results'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaxprune bench: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_bench_output_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    from flaxprune import benchmark

    monkeypatch.setattr(benchmark, "run", _no_suite)
    (tmp_path / "results").write_text("mine")
    assert cli.main(["bench", "--quick", f"--output={tmp_path / 'results'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaxprune bench: --output=") and "accepted: a folder" in err and err.count("\n") == 1
    assert (tmp_path / "results").read_text() == "mine"


@pytest.mark.e2e
def test_bench_runs_the_suite_and_writes_its_files(tmp_path, capsys):
    argv = ["bench", "--quick", "--size=tiny", "--models=sru", "--levels=0.5", "--batches=2", "--seqs=16",
            "--repeats=1", "--notraining", f"--output={tmp_path}"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Summary") and "| sru_tiny | 0.5 (0.500) |" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_cpu_quick.json", "bench_cpu_quick.md"]
    saved = json.loads((tmp_path / "bench_cpu_quick.json").read_text())
    assert saved["command"].startswith("python experiments/bench.py --quick --size=tiny --models=sru --levels=0.5")
    assert [r["variant"] for r in saved["rows"][1:]] == ["gated", "ungated", "dense", "pruned_0.5"]


@pytest.mark.e2e
def test_the_bench_script_is_the_bench_command():
    command = [sys.executable, str(REPO / "experiments" / "bench.py"), "--help"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == subprocess.run([sys.executable, "-m", "flaxprune.cli", "bench", "--help"], cwd=REPO,
                                         capture_output=True, text=True, timeout=300, check=False).stdout

"""The built wheel holds the whole library, and `flaxprune train` runs from an install of it.

An editable install (``pip install -e .``) reads the source tree, so it hides
a package folder that the build leaves out: ``flaxprune/training/`` once had
no ``__init__.py`` and the wheel shipped without it. Here the wheel is built
from a copy of the sources that a build needs (``setup.py``, ``README.md``,
``flaxprune/``), its file list is compared with the source tree, and it is
installed into a fresh virtual environment outside the repository, whose
``flaxprune train`` then runs a few steps from a directory that is not the
repository. The fresh venv reaches the test environment's dependencies (jax,
flax, ...) through a ``.pth`` line rather than downloading them again; the
``.pth`` files of that directory (the editable install's hook among them) are
not processed from there, and the test checks that ``flaxprune`` is imported
from the fresh venv.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "flaxprune", src / "flaxprune", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    _run([*build, str(src)], src)
    (found,) = dist.glob("flaxprune-*.whl")
    return found


def test_the_wheel_holds_every_module_of_the_source_tree(wheel):
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "flaxprune").rglob("*.py")}
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.endswith(".py")}
        entry_points = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert sources - shipped == set(), "modules missing from the wheel (a package folder without __init__.py?)"
    assert "flaxprune/training/loop.py" in shipped
    assert "flaxprune = flaxprune.cli:main" in entry_points


def test_flaxprune_train_runs_from_a_fresh_install(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    fresh_site = pathlib.Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    )
    (fresh_site / "test_env_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["JAX_PLATFORMS"] = "cpu"
    where = _run([str(python), "-c", "import flaxprune.training.loop as m; print(m.__file__)"], tmp_path, env)
    assert where.strip().startswith(str(fresh_site)), f"flaxprune was imported from {where.strip()}, not the wheel"

    config = tmp_path / "sru_small.py"  # experiments/ is not part of the package: the user brings a config
    shutil.copy2(ROOT / "experiments" / "configs" / "sru_small.py", config)
    overrides = {
        "model.d_model": 16, "model.n_layers": 2, "model.rank": 4, "data.max_bytes": 20_000,
        "data.data_dir": str(tmp_path / "tfds"), "train.batch_size": 4, "train.seq_len": 16, "train.steps": 4,
        "train.log_every": 2, "train.eval_every": 4, "train.checkpoint_every": 2, "train.eval_batch_size": 2,
        "train.speed_batch_size": 2, "prune.target_warmup": 2,
    }
    cmd = [str(venv / "bin" / "flaxprune"), "train", f"--config={config}", f"--workdir={tmp_path / 'run'}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    _run(cmd, tmp_path, env)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["step"] == 4
    assert (tmp_path / "run" / "reduced").is_dir()

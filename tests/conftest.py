"""Shared test setup: run on CPU, keep float32 defaults, find ../shared data, and the test tiers.

Two tiers: ``make test-fast`` runs the unit tests (``-m "not e2e"``, about two
minutes on 2 cores); ``make test`` (and CI) runs everything. A test that trains
a run end to end, builds a package or runs a script is marked
``@pytest.mark.e2e``.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multihost: two processes on localhost (jax.distributed, gloo); skipped where localhost sockets are refused",
    )
    config.addinivalue_line(
        "markers", "e2e: end-to-end (a training run, a built wheel, a script); skipped by make test-fast"
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tfds data dir shared by a test module's tiny runs (each corpus is prepared once per module)."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test where it is absent (a fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA

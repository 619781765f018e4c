"""Fixtures shared by the whole suite.

Weights: `params` (random VGG-19 arrays) and `synthetic_params_path` (the same values in a params
file). Images: `photo(name, size)`, the repo's photos in tests/data. Environment: `private_cache`
(automatic, the whole session), `empty_cache` (one test's own), `strict_rank_promotion`.

Skips: a test whose optional package is missing skips (`pytest.importorskip`), except where
$NST_JAX_REQUIRE_EXTRAS=1 (.ci/run sets it after installing the test extra): there a missing
package fails the test, so an install step that breaks an extra cannot turn into a green run.
"""

import functools
import os

import jax
import jax.numpy as jnp
import pytest

from datafiles import IMAGES
from nst_jax.imaging.images import load_image
from nst_jax.weights.convert import convert
from weights_tools.synthetic import synthetic_params, write_synthetic


@pytest.fixture(scope="session")
def params():
    """`weights_tools.synthetic.synthetic_params(seed=0)` as jax arrays: random VGG-19 weights (all
    16 convolutions, {"conv1_1": {"kernel": HWIO, "bias"}, ...}), the values `synthetic_params_path`
    holds. Made once per session (jax arrays cannot be changed in place); for plumbing and
    numerics, never for art."""
    return jax.tree_util.tree_map(jnp.asarray, synthetic_params(seed=0))


@pytest.fixture(scope="session")
def synthetic_params_path(tmp_path_factory):
    """Path of a params file converted from a synthetic Keras .h5 (random VGG-19, seed 0).

    `nst_jax.load_params(path)` gives params equal to
    `weights_tools.synthetic.synthetic_params(seed=0)` and metadata with preprocessing "caffe",
    source_format "keras-h5" and synthetic=True. Made once per session; for plumbing, numerics
    and benchmarks, never for art.
    """
    folder = tmp_path_factory.mktemp("synthetic-params")
    public = folder / "vgg19_synthetic_notop.h5"
    write_synthetic("keras-h5", public, seed=0)
    params_path = folder / "vgg19_synthetic.npz"
    convert(public, params_path)
    public.unlink()  # only the params file is needed: 80 MB less on disk
    return params_path


@pytest.fixture(scope="session")
def photo():
    """photo(name, size): tests/data/<name> (e.g. "tubingen.jpg") as `load_image(path, size)` gives
    it: (H, W, 3) float32 RGB in [0, 1], long side `size` px. Each file and size is read once per
    session; every call returns a fresh copy, so a test may change it."""
    load = functools.lru_cache(maxsize=None)(lambda name, size: load_image(IMAGES / name, size))
    return lambda name, size: load(name, size).copy()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The suite's own $NST_JAX_CACHE: CLI runs keep compiled programs there, not in ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("nst-jax-cache")
    previous = os.environ.get("NST_JAX_CACHE")
    os.environ["NST_JAX_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("NST_JAX_CACHE", None)
    else:
        os.environ["NST_JAX_CACHE"] = previous


@pytest.fixture
def empty_cache(tmp_path_factory, monkeypatch):
    """An empty $NST_JAX_CACHE for one test, and no $NST_JAX_WEIGHTS override: any download,
    conversion or compiled program goes there. Outside tmp_path, so never among the files a
    test counts there. Returns the folder."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NST_JAX_CACHE", str(folder))
    monkeypatch.delenv("NST_JAX_WEIGHTS", raising=False)
    return folder


@pytest.fixture
def strict_rank_promotion():
    """jax.numpy refuses implicit rank promotion during the test (a broadcast must be written out)."""
    with jax.numpy_rank_promotion("raise"):
        yield


REQUIRE_EXTRAS = os.environ.get("NST_JAX_REQUIRE_EXTRAS") == "1"
# What pytest.importorskip's skip says.
_MISSING = "could not import"


def _missing_package(report):
    return REQUIRE_EXTRAS and report.skipped and _MISSING in str(report.longrepr)


def _fail_for_missing_package(report):
    report.outcome = "failed"
    report.longrepr = f"{report.longrepr} (NST_JAX_REQUIRE_EXTRAS=1: the test extra must provide it)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _missing_package(report):
        _fail_for_missing_package(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _missing_package(report):  # a module-level importorskip skips the whole file
        _fail_for_missing_package(report)

"""Fixtures shared by the whole suite."""

import pytest

from nst_jax.weights.convert import convert
from weights_tools.synthetic import write_synthetic


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

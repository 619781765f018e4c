"""The suite's own rules: what a skip may hide."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
NEEDS_IN_A_TEST = "import pytest\n\ndef test_needs():\n    pytest.importorskip('no_such_package_for_nst_jax')\n"
NEEDS_FOR_THE_FILE = "import pytest\npytest.importorskip('no_such_package_for_nst_jax')\n\ndef test_needs():\n    pass\n"


def _pytest(path, require):
    """pytest on `path` with the suite's conftest, extras required or not."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
    environment.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]),
                       NST_JAX_REQUIRE_EXTRAS="1" if require else "0")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           str(path)], env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("source", [NEEDS_IN_A_TEST, NEEDS_FOR_THE_FILE], ids=["in a test", "for the file"])
def test_a_missing_optional_package_fails_where_the_extras_are_required(tmp_path, source):
    """.ci/run sets NST_JAX_REQUIRE_EXTRAS=1 after installing the test extra: there a test that
    would skip for want of a package fails instead (a whole file's skip too)."""
    path = tmp_path / "test_needs_a_package.py"
    path.write_text(source)
    skipped = _pytest(path, require=False)
    assert skipped.returncode in (0, 5) and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr  # 5: no test ran
    required = _pytest(path, require=True)
    assert required.returncode != 0 and "the test extra must provide it" in required.stdout, required.stdout


def test_ci_requires_the_extras():
    assert "export NST_JAX_REQUIRE_EXTRAS=1" in (TESTS.parent / ".ci" / "run").read_text()

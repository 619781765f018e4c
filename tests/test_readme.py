"""The README's Python examples: every name they import exists (a renamed module broke one)."""

import re

import pytest

from datafiles import ROOT


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def _import_statements(block):
    return [line.strip() for line in block.splitlines() if re.match(r"\s*(from \S+ )?import ", line)]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STATEMENTS = [(document.name, statement) for document in DOCUMENTS
              for block in _python_blocks(document.read_text()) for statement in _import_statements(block)]


def test_the_readme_has_python_examples_to_check():
    assert len([name for name, _ in STATEMENTS if name == "README.md"]) >= 5


@pytest.mark.parametrize("document, statement", STATEMENTS, ids=[f"{d}: {s}" for d, s in STATEMENTS])
def test_every_import_in_the_examples_works(document, statement):
    if "nst_jax.video" in statement:  # the video modules need the [video] extra
        pytest.importorskip("av")
        pytest.importorskip("cv2")
    exec(statement, {})  # ImportError names what is missing

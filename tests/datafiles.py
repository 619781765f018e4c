"""Where the tests' files are: the repository, and tests/data/ (small copies of public images,
credits beside them)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "data"

"""Where the tests' images are: tests/data/ (small copies of public images, credits beside them)."""

from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "data"

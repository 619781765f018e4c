"""The package's imports go one way, as docs/ARCHITECTURE.md draws them.

Every `import`/`from ... import` of an nst_jax module (at module level or inside a function) is
read from the source, and a module may import only from its own layer or the layers below it.
nst_jax never imports weights_tools or bench; weights_tools never imports bench.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: the data flows from weights files through the model and the loss to the engine,
# which the command lines drive. `config` (Settings) sits between the loss and the engine.
LAYERS = ["errors", "atomic", "cache", "imaging", "model", "weights", "loss", "config", "engine", "video", "cli"]
# Entry points and the curated namespace may import anything in the package.
TOP = {"nst_jax", "nst_jax.run", "nst_jax.video.__main__"}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """Every absolute module name `path` imports (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer(module):
    """Index in LAYERS of an nst_jax module, by its first name under nst_jax."""
    return LAYERS.index(module.split(".")[1])


def package_files(package):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", package_files("nst_jax"), ids=lambda p: str(p.relative_to(ROOT)))
def test_nst_jax_imports_only_its_own_layer_and_below(path):
    module = module_name(path)
    imports = imported_modules(path)
    assert not {name for name in imports if name.split(".")[0] in ("weights_tools", "bench")}
    if module in TOP:
        return
    own = layer(module)
    upward = sorted(name for name in imports
                    if name.startswith("nst_jax.") and name.split(".")[1] in LAYERS and layer(name) > own)
    assert not upward, f"{module} ({LAYERS[own]}) imports from a layer above it: {upward}"


def test_every_subpackage_has_a_layer():
    subpackages = {path.parent.name for path in package_files("nst_jax") if path.parent.name != "nst_jax"}
    modules = {path.stem for path in (ROOT / "nst_jax").glob("*.py")} - {"__init__", "run"}
    assert subpackages | modules <= set(LAYERS)


@pytest.mark.parametrize("path", package_files("weights_tools"), ids=lambda p: str(p.relative_to(ROOT)))
def test_weights_tools_uses_nst_jax_and_never_bench(path):
    assert not {name for name in imported_modules(path) if name.split(".")[0] == "bench"}

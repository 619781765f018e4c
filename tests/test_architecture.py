"""The package's imports go one way, as docs/ARCHITECTURE.md draws them; its public API is annotated.

Every `import`/`from ... import` of an nst_jax module (at module level or inside a function) is
read from the source, and a module may import only from its own layer or the layers below it.
nst_jax never imports weights_tools or bench; weights_tools never imports bench.

Every public function and method of nst_jax and weights_tools (its name does not start with
"_", or it is a public class's __init__) annotates each parameter and its return, so that
`python -m mypy` checks its callers; mypy's disallow_incomplete_defs (pyproject.toml) only
catches functions annotated in part. Private helpers and nested functions may stay unannotated.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: the data flows from weights files through the model and the loss to the engine,
# which the command lines drive. `config` (Settings) sits between the loss and the engine.
LAYERS = ["errors", "atomic", "cache", "imaging", "model", "weights", "loss", "config", "engine", "video", "preview", "cli"]
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


def public_functions(tree):
    """(qualified name, def node, is a method) of every public module-level function and every
    public method of a public class (classes nested in classes included; not functions in
    functions)."""
    found = []

    def visit(body, prefix, in_class):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not node.name.startswith("_") or (in_class and node.name == "__init__"):
                    found.append((prefix + node.name, node, in_class))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", True)

    visit(tree.body, "", False)
    return found


def unannotated(function, is_method):
    """The parameters of `function` without an annotation, and "return" if it has none."""
    arguments = function.args
    parameters = arguments.posonlyargs + arguments.args
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)
    if is_method and not is_static and parameters and parameters[0].arg in ("self", "cls"):
        parameters = parameters[1:]
    parameters = (parameters + ([arguments.vararg] if arguments.vararg else []) + arguments.kwonlyargs
                  + ([arguments.kwarg] if arguments.kwarg else []))  # in the signature's order
    missing = [parameter.arg for parameter in parameters if parameter.annotation is None]
    return missing + (["return"] if function.returns is None else [])


def test_unannotated_finds_what_is_missing():
    source = """
def public(a, b: int, *args, c=1, **kwargs) -> int: ...
def _private(a): ...
def done(a: int, *, b: str = "") -> None:
    def nested(x): ...
class Public:
    def __init__(self, size): ...
    def method(self, x: int): ...
    @staticmethod
    def static(self) -> None: ...
    @classmethod
    def make(cls) -> "Public": ...
    def _helper(self, x): ...
class _Private:
    def method(self, x): ...
"""
    found = {name: unannotated(node, is_method) for name, node, is_method in public_functions(ast.parse(source))}
    assert found == {"public": ["a", "args", "c", "kwargs"], "done": [], "Public.__init__": ["size", "return"],
                     "Public.method": ["return"], "Public.static": ["self"], "Public.make": []}


@pytest.mark.parametrize("path", package_files("nst_jax") + package_files("weights_tools"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_public_functions_are_annotated(path):
    missing = {name: names for name, node, is_method in public_functions(ast.parse(path.read_text()))
               if (names := unannotated(node, is_method))}
    assert not missing, (f"{path.relative_to(ROOT)}: public functions lack annotations (parameter "
                         f"names, or 'return'): {missing}")


if __name__ == "__main__":  # the order docs/ARCHITECTURE.md draws, as this test enforces it
    print(" < ".join(LAYERS))

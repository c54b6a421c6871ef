"""The layers hold: the core imports neither training nor evaluation, training imports no
evaluation module, and no import inside a function hides a dependency."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sde_diffusion"
LAYERS = {"core": 0, "training": 1, "pretrained": 1, "evaluation": 2}


def layer(module: str) -> int:
    """``sde_diffusion.training.data`` -> 1; a core module -> 0."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imports(path: Path) -> list[tuple[str, bool]]:
    """The package modules ``path`` imports, each with whether the import sits in a function."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    tree = ast.parse(path.read_text())
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sde_diffusion"):
                found.append((target, id(node) in inner))
    return found


def test_no_module_imports_from_a_layer_above_it_or_inside_a_function():
    upward, hidden = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package re-exports every layer's public names
        for target, in_function in imports(path):
            if layer(target) > layer(module):
                upward.append(f"{module} -> {target}")
            if in_function:
                hidden.append(f"{module} -> {target}")
    assert not upward, f"imports from a layer above: {upward}"
    assert not hidden, f"imports inside functions: {hidden}"


def test_the_scan_sees_the_imports_it_judges():
    """Not vacuous: the trainer's imports of the core are found, at module level."""
    found = imports(PACKAGE / "training" / "trainer.py")
    assert ("sde_diffusion.sampling", False) in found
    assert ("sde_diffusion.training.state", False) in found

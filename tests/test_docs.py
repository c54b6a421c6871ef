"""The documentation cannot rot: its Python examples run, and every public name is documented.

Every ```python block of README.md and docs/*.md runs, page by page in one fresh
interpreter (a page's later blocks may use its earlier ones), in a scratch folder. A block
that would run long reads the environment variable ``DOCS_QUICK`` (set to 1 here) to
shorten itself, and says so in a comment. Every ``sdediff`` line of a shell block runs
too, page by page in one folder (so a trained checkpoint feeds the next line), with its
step and sample counts cut by ``quick``; the user files the lines name are made first.
The ``torchrun`` lines need GPUs or several nodes; their two-process CPU equivalents run
in test_distributed.py.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import sde_diffusion as sd

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_python_example_runs(page, tmp_path):
    """The page's blocks, in order, in a fresh interpreter (as a reader would paste them)."""
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(python_blocks(page)))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "DOCS_QUICK": "1", "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    missing = re.search(r"No module named '(diffusers|k_diffusion)'", result.stderr)
    if missing:  # an optional peer: pip install -e ".[peers]"
        pytest.skip(f"{page.name} needs {missing.group(1)}")
    assert result.returncode == 0, result.stderr[-3000:]


FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)  # every block, whatever its language
SHELL_LANGUAGES = ("", "bash", "console", "text", "sh")


def shell_blocks(text: str) -> list[str]:
    return [body for language, body in FENCED.findall(text) if language in SHELL_LANGUAGES]


QUICK = {
    "--steps": 4,
    "-n": 16,
    "--num-samples": 16,
    "--elbo-steps": 10,
    "--checkpoint-every": 2,
    "--samples": 16,
    "--max-evaluations": 10,
    "--snapshot-every": 2,
    "--eval-every": 2,
    "--train-steps": 2,
    "--teacher-steps": 8,
}


def sdediff_lines(page: Path) -> list[tuple[str, bool]]:
    """``(command, fails)`` for each ``sdediff`` line of the page's shell blocks, in order;
    ``fails`` when the output the page shows under it is an error."""
    found = []
    for block in shell_blocks(page.read_text()):
        lines = re.sub(r"\\\n\s*", " ", block).splitlines()  # join continued lines
        for i, line in enumerate(lines):
            command = re.sub(r"^\$ ", "", line.strip())
            if not command.startswith("sdediff "):
                continue
            shown = []
            for after in lines[i + 1 :]:
                if after.startswith("$ ") or after.startswith("sdediff "):
                    break
                shown.append(after)
            found.append((command.split("  #")[0].strip(), any("Error:" in s for s in shown)))
    return found


def quick(args: list[str]) -> list[str]:
    """The command with its long runs shortened (the DOCS_QUICK switch of the examples)."""
    out = list(args)
    if out[0] in ("train", "train-autoencoder") and "--steps" not in out and "--resume" not in out:
        out += ["--steps", str(QUICK["--steps"])]  # instead of the default 2000
    if out[0] == "distill" and "--resume" not in out:  # instead of 2000 steps a round
        out += [f for flag in ("--train-steps", "--teacher-steps") if flag not in out
                for f in (flag, str(QUICK[flag]))]  # fmt: skip
    if out[0] == "tune":  # instead of 256 draws and 300 solves
        out += [f for flag in ("--samples", "--max-evaluations") if flag not in out
                for f in (flag, str(QUICK[flag]))]  # fmt: skip
    for i, arg in enumerate(out[:-1]):
        if arg in QUICK and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), QUICK[arg]))
    return out


def example_files(folder: Path) -> None:
    """The user files the examples name: point clouds, image folders, a config."""
    import numpy as np
    from PIL import Image

    points = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
    for name in ("points.npz", "my_points.npz"):
        np.savez(folder / name, x=points)
    for name in ("faces", "images"):
        (folder / name).mkdir()
        for k in range(8):
            pixels = np.random.default_rng(k).integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{k}.png")
    (folder / "t.toml").write_text("[train]\nsteps = 6\n")
    from sde_diffusion.training.data import digits

    data = digits("all")  # one class of digits, in the shipped model's units
    np.savez(folder / "threes.npz", x=data.x[data.labels == 3].numpy())


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if sdediff_lines(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_sdediff_example_runs(page, tmp_path):
    """Each command line of the page, in order, in one folder, shortened by ``quick``; it
    succeeds unless the page shows it failing (then it must fail with status 2)."""
    example_files(tmp_path)
    env = {**os.environ, "DOCS_QUICK": "1", "MPLBACKEND": "Agg"}
    for command, fails in sdediff_lines(page):
        args = quick(shlex.split(command)[1:])
        result = subprocess.run(
            [sys.executable, "-m", "sde_diffusion", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if fails:
            assert result.returncode == 2, f"{command}: expected a usage error"
        else:
            assert result.returncode == 0, f"{command}:\n{result.stderr[-2000:]}"


def test_the_pages_have_examples():
    """The test above is not vacuous: the README and the guides hold runnable code."""
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10


def _api_modules() -> set[str]:
    """Modules rendered by a ``::: module`` line of an API page (the lines the docs hook
    generates from a package's modules included)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import MODULES, module_entries
    finally:
        sys.path.pop(0)
    text = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    text = MODULES.sub(lambda m: module_entries(m.group(1)), text)
    return set(re.findall(r"^::: (sde_diffusion[\w.]*)", text, re.M))


def test_every_public_name_has_a_docstring_and_an_api_page():
    griffe = pytest.importorskip("griffe", reason="the docs extra is not installed")
    package = griffe.load("sde_diffusion", search_paths=[str(ROOT)])
    pages = _api_modules()
    missing_doc, missing_page = [], []
    for name in sd.__all__:
        if name == "__version__":
            continue
        obj = package[name]
        target = obj.final_target if obj.is_alias else obj
        if not (target.docstring and target.docstring.value.strip()):
            missing_doc.append(name)
        module = target.path if target.is_module else target.parent.path
        if module not in pages:
            missing_page.append(f"{name} ({module})")
    assert not missing_doc, f"public names without a docstring: {missing_doc}"
    assert not missing_page, f"public names on no API page: {missing_page}"


@pytest.mark.parametrize("package", ["solvers", "sdes"])
def test_every_solver_and_sde_module_has_an_api_entry(package):
    import importlib
    import pkgutil

    documented = _api_modules()
    path = importlib.import_module(f"sde_diffusion.{package}").__path__
    for module in pkgutil.iter_modules(path):
        assert f"sde_diffusion.{package}.{module.name}" in documented, module.name


def test_every_api_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, page.name


def test_site_pictures_exist():
    """Pages link pictures as img/NAME, published from benchmarks/results by docs/hooks.py."""
    results = ROOT / "benchmarks" / "results"
    for page in PAGES[1:]:
        for name in re.findall(r"\]\(img/([^)]+)\)", page.read_text()):
            assert (results / name).is_file(), f"{page.name} links img/{name}"

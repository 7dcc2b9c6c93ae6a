"""The three layers and their import rules: `clip/` imports nothing of `tailclip`; the method
(`tailclip/`, outside `engine/` and `tools/`) imports neither the runner nor the tools, nor
TensorBoard or matplotlib; the runner (`tailclip/engine/`) never imports the tools."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("clip", "tailclip", "tailclip.engine", "tailclip.tools")  # lowest first
# Libraries that belong to a layer: the method computes, it neither logs nor draws.
METHOD_FORBIDDEN_LIBRARIES = ("torch.utils.tensorboard", "tensorboard", "matplotlib")


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the project module ``module``, None for a library."""
    for index in reversed(range(len(LAYERS))):
        name = LAYERS[index]
        if module == name or module.startswith(name + "."):
            return index
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            found.append((node.lineno, name))
            # `from tailclip import engine` imports the subpackage
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names
                      if layer_of(f"{name}.{alias.name}") != layer_of(name)]
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each import of ``source`` (the module ``module``) that breaks the layer rules."""
    own = layer_of(module)
    problems = []
    for line, name in imported_modules(source, module, is_package):
        target = layer_of(name)
        if target is not None and target > own:
            problems.append(f"{module}:{line} imports {name} (layer {LAYERS[target]} above {LAYERS[own]})")
        if own <= 1 and target is None and name.startswith(METHOD_FORBIDDEN_LIBRARIES):
            problems.append(f"{module}:{line} imports {name}, which the runner or the tools use")
    return problems


def project_modules() -> list[Path]:
    return sorted(p for package in ("clip", "tailclip") for p in (ROOT / package).rglob("*.py"))


def test_no_import_breaks_the_layers():
    problems = [problem for path in project_modules()
                for problem in violations(path.read_text(), module_name(path), path.name == "__init__.py")]
    assert problems == []


@pytest.mark.parametrize("module, source, expected", [
    ("clip.model", "from tailclip.errors import TailCLIPError\n", "clip.model:1 imports tailclip.errors"),
    ("tailclip.losses", "import tailclip.engine.training\n", "imports tailclip.engine.training"),
    ("tailclip.metrics", "from tailclip import tools\n", "imports tailclip.tools"),
    ("tailclip.data.datasets", "from ..engine.cache import CachedImages\n", "imports tailclip.engine.cache"),
    ("tailclip.engine.logger", "from tailclip.tools.report import x\n", "imports tailclip.tools.report"),
    ("tailclip.model", "def f():\n    import matplotlib.pyplot\n", "imports matplotlib.pyplot"),
    ("tailclip.metrics", "from torch.utils.tensorboard import SummaryWriter\n", "torch.utils.tensorboard"),
])
def test_the_check_sees_each_kind_of_wrong_import(module, source, expected):
    problems = violations(source, module)
    assert len(problems) == 1 and expected in problems[0]


def test_imports_downwards_are_allowed():
    assert violations("from tailclip.config import Config\nimport clip\n", "tailclip.engine.training") == []
    assert violations("from .balance import class_groups\n", "tailclip.data.datasets") == []


def test_importing_the_method_loads_neither_runner_tools_nor_their_libraries():
    method = [module_name(p) for p in project_modules() if layer_of(module_name(p)) <= 1]
    code = ("import importlib, sys\n"
            f"for name in {method!r}:\n    importlib.import_module(name)\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith("
            "('tailclip.engine', 'tailclip.tools', 'tensorboard', 'torch.utils.tensorboard', 'matplotlib')))))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "tailclip.losses" in method and "clip.model" in method
    assert loaded.stdout.split() == []

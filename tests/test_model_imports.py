"""The model is the encoders and the class logits: it imports no loss, no metric and no
config; the losses take their settings as given (no config either)."""
import ast
from pathlib import Path

TAILCLIP = Path(__file__).resolve().parents[1] / "tailclip"


def project_imports(module: str) -> set[str]:
    tree = ast.parse((TAILCLIP / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name.lstrip(".").removeprefix("tailclip.") for name in found if name.startswith((".", "tailclip"))}


def test_the_model_imports_no_loss_metric_or_config():
    assert project_imports("model") & {"losses", "metrics", "config"} == set()


def test_the_losses_import_no_config():
    assert "config" not in project_imports("losses")

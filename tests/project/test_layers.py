"""The package layout's one rule: dependencies point one way, and only `medpfl_app.nvflare` (and the CLI) touch NVFlare.

cli → nvflare → audit / reports / experiments → attacks / defenses / metrics / training → data / models → shared
helpers. Checked on the source (every ``import`` statement, function-local ones too), so a lazy import cannot hide an
upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "medpfl_app"

#: Layer of each top-level part of ``medpfl_app``; a module may import its own layer's parts only where
#: `SAME_LAYER` allows it, and any lower layer.
LAYERS: dict[str, int] = {
    "errors": 0,
    "registry": 0,
    "atomic_io": 0,
    "text": 0,
    "contracts": 0,
    "data": 1,
    "models": 1,
    "attacks": 2,
    "defenses": 2,
    "metrics": 2,
    "training": 2,
    "audit": 3,
    "reports": 3,
    "experiments": 3,
    "nvflare": 4,
    "cli": 5,
}
#: Imports allowed between parts of one layer (importer, imported).
SAME_LAYER = {
    ("registry", "errors"),
    ("atomic_io", "errors"),
    ("text", "errors"),
    ("contracts", "errors"),
    ("contracts", "text"),
    ("data", "models"),
    ("models", "data"),
    ("attacks", "metrics"),
    ("attacks", "defenses"),
    ("training", "defenses"),
    ("training", "metrics"),
    ("reports", "audit"),
    ("experiments", "audit"),
    ("experiments", "reports"),
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "medpfl_app" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _owner(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_owner(path) for path in _modules()} - {"__init__"}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    owner = _owner(path)
    if owner == "__init__":
        return
    wrong = []
    for module in _imports(path):
        if module.split(".")[0] == "nvflare" and owner not in ("nvflare", "cli"):
            wrong.append(f"{module} (only medpfl_app.nvflare and the CLI import NVFlare)")
        target = _part(module)
        if target is None or target == owner or target not in LAYERS:
            continue
        if LAYERS[target] > LAYERS[owner] or (LAYERS[target] == LAYERS[owner] and (owner, target) not in SAME_LAYER):
            wrong.append(f"{module} ({owner} is layer {LAYERS[owner]}, {target} layer {LAYERS[target]})")
    assert not wrong, f"{path.relative_to(PACKAGE)} imports upwards: " + "; ".join(wrong)

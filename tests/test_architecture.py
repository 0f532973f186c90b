"""The package boundaries of ../shared/DESIGN.md, checked on the import statements themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("coldchain", "edge_agent", "hub", "firmware_sims")
# Which packages each one may import (besides itself and third-party code).
ALLOWED = {
    "edge_agent": {"coldchain"},
    "hub": {"coldchain"},
    "firmware_sims": set(),  # the other end of the wire encodes on its own, never with our decoders
    "coldchain": set(),
}
# The command line and the demo wire every part together.
WIRING_MODULES = {"coldchain/cli.py", "coldchain/demo.py"}
# Libraries a gateway does not install (coldchain[agent] has no web framework or database driver).
HUB_ONLY_LIBRARIES = {"fastapi", "uvicorn", "starlette", "pydantic", "sqlalchemy", "amqtt"}


def imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package: str) -> None:
    violations = []
    for path in sources(package):
        relative = path.relative_to(REPO).as_posix()
        if relative in WIRING_MODULES:
            continue
        forbidden = (imported_top_levels(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if forbidden:
            violations.append(f"{relative} imports {sorted(forbidden)}")
    assert violations == []


def test_the_gateway_side_needs_no_hub_libraries() -> None:
    gateway_side = [
        *sources("edge_agent"),
        *(p for p in sources("coldchain") if p.relative_to(REPO).as_posix() not in WIRING_MODULES),
    ]
    offenders = {p.name: sorted(imported_top_levels(p) & HUB_ONLY_LIBRARIES) for p in gateway_side}
    assert {name: libs for name, libs in offenders.items() if libs} == {}

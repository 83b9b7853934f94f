"""The package boundaries the layout promises, checked on the source: who may import whom.

- ``workers`` never imports ``beat`` (the CLI hands beat's tasks to a worker that should run them);
- ``app`` imports neither ``workers`` nor ``beat`` at module level (``app.cli``, the composition root, does so
  inside its commands);
- nothing installed imports ``harness``, ``bench`` or ``tests`` (they are not shipped);
- only ``app.broker`` spells a ``maas:*`` key, and only ``app.control`` calls ``app.control``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("app", "workers", "beat", "gateway")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", _modules("workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_never_import_beat(path: Path) -> None:
    assert not {"beat", "gateway"} & _imports(path, module_level_only=False)


@pytest.mark.parametrize("path", _modules("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_gateway_imports_only_app(path: Path) -> None:
    assert not {"workers", "beat"} & _imports(path, module_level_only=False)


@pytest.mark.parametrize("path", _modules("app"), ids=lambda p: str(p.relative_to(ROOT)))
def test_app_imports_neither_workers_nor_beat_at_module_level(path: Path) -> None:
    assert not {"workers", "beat", "gateway"} & _imports(path, module_level_only=True)


@pytest.mark.parametrize("package", SHIPPED)
def test_shipped_packages_do_not_import_the_harness(package: str) -> None:
    for path in _modules(package):
        if path.name == "cli.py":
            continue  # `maas demo` says where the demo runs when harness/ is absent
        assert not {"harness", "bench", "tests"} & _imports(path, module_level_only=False), path


def test_only_the_broker_spells_maas_keys() -> None:
    key = re.compile(r"""["']maas:[a-z]""")
    offenders = [
        str(path.relative_to(ROOT))
        for package in SHIPPED
        for path in _modules(package)
        if "broker" not in path.parts and key.search(path.read_text())
    ]
    assert offenders == []


def test_only_the_control_module_calls_celery_control() -> None:
    control_call = re.compile(r"\.control\.(inspect|add_consumer|cancel_consumer)")
    offenders = [
        str(path.relative_to(ROOT))
        for package in SHIPPED
        for path in _modules(package)
        if path.name != "control.py" and control_call.search(path.read_text())
    ]
    assert offenders == []

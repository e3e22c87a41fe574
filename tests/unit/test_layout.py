"""The package's layers depend on each other in one direction only, read from the source (every
`import`, module-level or inside a function):

    records, config  <-  kafka  <-  state  <-  stages  <-  runtime  <-  cli
                                                              tools (anything)  <-  cli

The Kafka layer builds records and never imports a processing stage; stages never open a Kafka
client; nothing a deployed worker runs imports the development tools (the development broker
included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "stream_infer"

# layer -> the package's layers it must not import
FORBIDDEN: dict[str, set[str]] = {
    "records": {"kafka", "state", "stages", "runtime", "tools", "cli", "config"},
    "kafka": {"state", "stages", "runtime", "tools", "cli"},
    "state": {"stages", "runtime", "tools", "cli"},
    "stages": {"runtime", "tools", "cli"},
    "runtime": {"tools", "cli"},
    "config": {"state", "stages", "runtime", "tools", "cli"},
}
# Stages and state reach Kafka only through the Kafka layer (stream_infer.kafka), never a client.
NO_CLIENT = {"stages", "records"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "stream_infer" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        found.append((".".join(relative.parts), path))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    wrong = []
    for module, path in _modules():
        if _layer(module) != layer:
            continue
        for name in _imports(path):
            target = _layer(name)
            if target in FORBIDDEN[layer]:
                wrong.append(f"{module} imports {name}")
            if layer in NO_CLIENT and name.split(".")[0] == "confluent_kafka":
                wrong.append(f"{module} imports the Kafka client {name}")
    assert not wrong, "\n".join(wrong)


def test_only_tools_and_the_command_line_import_tools() -> None:
    wrong = [
        f"{module} imports {name}"
        for module, path in _modules()
        if _layer(module) not in ("tools", "cli")
        for name in _imports(path)
        if _layer(name) == "tools"
    ]
    assert not wrong, "\n".join(wrong)


def test_the_layers_exist() -> None:
    """The rules above name real packages (a rename would make them pass vacuously)."""
    layers = {_layer(module) for module, _ in _modules()}
    assert set(FORBIDDEN) | {"tools", "cli"} <= layers

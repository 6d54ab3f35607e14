"""Dependencies point inward, as DEVELOPERS.md lays out; this test keeps them that way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "playproof"

# What each part may import of ours (besides itself).
ALLOWED = {
    "errors": set(),
    "protocol": {"errors"},
    "rules": {"errors", "protocol"},
    # Ed25519 for protocol version 2, and the key log's hash chain: pure, beside the rules.
    "signing": {"errors", "protocol"},
    "keylog": {"errors", "signing"},
    # What a buyer runs alone on an evidence export: no store, no service.
    "evidence": {"errors", "protocol", "signing", "keylog"},
    "config": {"errors", "protocol", "rules"},
    # HOST:PORT and a bound socket, for the service and the device's local agent alike.
    "listen": {"errors"},
    # The pure core of verification, beside the rules: no I/O, nothing above it.
    "catalog": {"errors", "protocol"},
    "catalog_merge": {"catalog"},
    "imaging": {"errors"},
    "verification": {"errors", "rules", "catalog", "imaging"},
    # Statement arithmetic: pure, priced from the catalog, failures named by verification.
    "billing": {"errors", "catalog", "verification", "money"},
    # Exact decimals, ISO 4217 minor units and rounding: pure, beside billing.
    "money": {"errors", "catalog"},
    # Buyer formats: pure, rendered from the catalog, overlap as verification defines it.
    "exports": {"errors", "catalog", "verification"},
    "stores": {
        "errors",
        "protocol",
        "rules",
        "signing",
        "keylog",
        "catalog",
        "verification",
        "exports",
        "stores",
    },
    "device": {"errors", "protocol", "rules", "config", "signing", "listen", "device"},
    "server": {
        "errors",
        "protocol",
        "rules",
        "listen",
        "signing",
        "keylog",
        "config",
        "catalog",
        "catalog_merge",
        "billing",  # the statement route prices with it (server/statements.py)
        "imaging",
        "verification",
        "exports",
        "stores",
        "server",
        "pipeline",
    },
    "pipeline": {"errors", "protocol", "rules", "stores", "pipeline"},
    # An outer layer, like the CLI: it drives the SDK against a service and reads both sides.
    "fleet": {
        "errors",
        "protocol",
        "rules",
        "signing",
        "keylog",
        "evidence",
        "config",
        "catalog",
        "device",
        "server",
        "stores",
        "fleet",
    },
}


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def our_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("playproof."):
                found.add(name.split(".")[1])
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in SRC.rglob("*.py") if part_of(p) in ALLOWED),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_each_module_imports_only_inward(path: Path) -> None:
    part = part_of(path)
    illegal = our_imports(path) - ALLOWED[part] - {part}
    assert not illegal, f"{path.relative_to(SRC)} ({part}) must not import {sorted(illegal)}"


def test_device_and_server_never_import_each_other() -> None:
    assert "server" not in ALLOWED["device"]
    assert "device" not in ALLOWED["server"]


def test_neither_device_nor_server_imports_the_fleet() -> None:
    assert "fleet" not in ALLOWED["device"]
    assert "fleet" not in ALLOWED["server"]

"""The package's floors: every import inside `scn/` goes to the same floor or one below, and no
module imports itself back through others (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# floor of each room of scn/ (a top-level module or package); a room imports only from floors at
# or below its own
FLOORS = {
    "scn": 0,  # the package itself: its version
    "errors": 0,
    "io": 1,
    "config": 1,
    "runtime": 1,
    "data": 2,
    "tracking": 2,
    "models": 3,
    "methods": 4,
    "checkpoints": 5,
    "inference": 6,
    "faces": 7,
    "engine": 7,
    # the tasks and the command-line tools
    **dict.fromkeys(
        (
            "app",
            "cli",
            "sweep",
            "predict",
            "features",
            "inspect",
            "report",
            "align",
            "export",
            "bench",
            "facebench",
            "cachebench",
        ),
        8,
    ),  # fmt: skip
}


def scn_imports() -> dict[str, set[str]]:
    """Module -> the scn modules it imports (at any depth of its code, lazy imports included)."""
    mods = {}
    for path in (ROOT / "scn").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path

    def resolve(target: str) -> str:
        while target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scn"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("scn")]
            else:
                continue
            found |= {resolve(t) for t in targets if resolve(t) in mods}
        graph[name] = found - {name}
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "scn"


def test_every_room_has_a_floor():
    rooms = {room(m) for m in scn_imports()}
    assert rooms <= set(FLOORS), f"give these rooms a floor: {sorted(rooms - set(FLOORS))}"


def test_no_import_goes_up_a_floor():
    up = [
        f"{m} ({FLOORS[room(m)]}) imports {t} ({FLOORS[room(t)]})"
        for m, targets in scn_imports().items()
        for t in targets
        if FLOORS[room(t)] > FLOORS[room(m)]
    ]
    assert not up, "\n".join(up)


def test_no_import_cycle():
    graph = scn_imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return [*path, m, t]
            if t not in state and (cycle := visit(t, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle)

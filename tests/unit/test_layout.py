"""The package layout's contracts: no import circle anywhere in sipproxy and sipoperator, and the layers.

- `sipproxy.sip` (the SIP core) imports nothing else of sipproxy;
- `sipproxy.shared` imports only `sipproxy.sip`;
- `sipproxy.worker` and `sipproxy.supervisor` (two processes) never import each other;
- `sipoperator` imports only `sipproxy.shared` of the proxy, and the proxy never imports the operator.

Every import counts: at module level, under `if TYPE_CHECKING:`, and inside functions.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Mapping

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {"sipproxy": ROOT / "proxy" / "sipproxy", "sipoperator": ROOT / "operator" / "sipoperator"}

# (importer, what it may import of the first-party packages; None = anything not forbidden, what it may not)
RULES: list[tuple[str, tuple[str, ...] | None, tuple[str, ...]]] = [
    ("sipproxy.sip", ("sipproxy.sip",), ()),
    ("sipproxy.shared", ("sipproxy.shared", "sipproxy.sip"), ()),
    ("sipproxy.worker", None, ("sipproxy.supervisor", "sipproxy.cli")),
    ("sipproxy.supervisor", None, ("sipproxy.worker", "sipproxy.cli")),
    ("sipproxy", None, ("sipoperator",)),
    ("sipoperator", ("sipoperator", "sipproxy.shared"), ()),
]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_sources() -> dict[str, str]:
    """Every module of sipproxy and sipoperator, by dotted name."""
    out: dict[str, str] = {}
    for top, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path.read_text()
    return out


def imports_of(name: str, source: str, modules: set[str], is_package: bool) -> set[str]:
    """The first-party modules `name` imports, each by its own dotted name (a `from X import Y` names X.Y when
    that is a module, else X)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                found.add(target)
    found.discard(name)
    return found


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    modules = set(sources)
    packages = {m for m in modules if any(o.startswith(m + ".") for o in modules)}
    return {m: imports_of(m, src, modules, m in packages) for m, src in sources.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None. Importing a module also runs its packages' __init__,
    so an import of a.b.c is an edge to a and a.b as well."""

    def edges(m: str) -> list[str]:
        out: set[str] = set()
        for target in graph.get(m, ()):
            parts = target.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(t for t in out if t in graph and t != m)

    visiting, done = 1, 2
    state: dict[str, int] = {}
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        state[start] = visiting
        stack = [iter(edges(start))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = done
            elif state.get(nxt) == visiting:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = visiting
                path.append(nxt)
                stack.append(iter(edges(nxt)))
    return None


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    problems: list[str] = []
    for module, targets in sorted(graph.items()):
        for importer, allowed, forbidden in RULES:
            if not _within(module, importer):
                continue
            for target in sorted(targets):
                if target == "sipproxy":
                    continue  # the bare top package (its __init__ is empty)
                if any(_within(target, f) for f in forbidden) or (
                    allowed is not None and not any(_within(target, a) for a in allowed)
                ):
                    problems.append(f"{module} imports {target} (rule for {importer})")
    return problems


def test_the_tree_is_the_one_checked() -> None:
    # The checks below must not pass because they found nothing to check.
    graph = import_graph(module_sources())
    for module in (
        "sipproxy.sip.engine",
        "sipproxy.shared.control",
        "sipproxy.supervisor.supervisor",
        "sipproxy.worker.__main__",
        "sipproxy.worker.udp",
        "sipproxy.cli",
        "sipoperator.store",
    ):
        assert module in graph
    assert "sipproxy.shared.control" in graph["sipproxy.supervisor.workers"]
    assert "sipproxy.shared.socketspec" in graph["sipoperator.spec"]


def test_no_import_circle() -> None:
    cycle = find_cycle(import_graph(module_sources()))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_layers() -> None:
    problems = layer_violations(import_graph(module_sources()))
    assert not problems, "layering broken:\n" + "\n".join(problems)


TYPE_CHECKING_BLOCK = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"


def test_the_circle_check_sees_imports_in_functions_and_under_type_checking() -> None:
    sources = {
        "sipproxy": "",
        "sipproxy.worker": "",
        "sipproxy.worker.a": "from sipproxy.worker import b\n",
        "sipproxy.worker.b": "def later() -> None:\n    from . import c\n",
        "sipproxy.worker.c": TYPE_CHECKING_BLOCK + "    import sipproxy.worker.a\n",
    }
    assert find_cycle(import_graph(sources)) == [
        "sipproxy.worker.a",
        "sipproxy.worker.b",
        "sipproxy.worker.c",
        "sipproxy.worker.a",
    ]
    sources["sipproxy.worker.c"] = "import sipproxy.worker\n"
    assert find_cycle(import_graph(sources)) is None
    # A package whose __init__ imports a module that imports the package back is a circle too.
    sources["sipproxy.worker"] = "from sipproxy.worker.a import thing\n"
    assert find_cycle(import_graph(sources)) == ["sipproxy.worker", "sipproxy.worker.a", "sipproxy.worker"]


def test_the_layer_check_names_each_broken_rule() -> None:
    sources = {
        "sipproxy.sip.core": "import sipproxy.shared.x\n",
        "sipproxy.shared.x": "def f() -> None:\n    from ..supervisor.y import Z\n",
        "sipproxy.supervisor.y": "from sipproxy.shared import x\nfrom sipproxy.sip import core\n",
        "sipproxy.worker.w": TYPE_CHECKING_BLOCK + "    from sipproxy.supervisor import y\n",
        "sipoperator.op": (
            "from sipproxy.supervisor.y import Z\nfrom sipproxy.shared.x import f\nimport sipoperator.other\n"
        ),
        "sipoperator.other": "",
    }
    assert layer_violations(import_graph(sources)) == [
        "sipoperator.op imports sipproxy.supervisor.y (rule for sipoperator)",
        "sipproxy.shared.x imports sipproxy.supervisor.y (rule for sipproxy.shared)",
        "sipproxy.sip.core imports sipproxy.shared.x (rule for sipproxy.sip)",
        "sipproxy.worker.w imports sipproxy.supervisor.y (rule for sipproxy.worker)",
    ]

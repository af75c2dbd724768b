"""OpenSIPS-style db_url to SQLAlchemy async URL."""

import pytest

from sipproxy.shared.db_url import to_sqlalchemy_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///.dev/proxy.db", "sqlite+aiosqlite:///.dev/proxy.db"),
        ("sqlite:////var/lib/sipproxy/proxy.db", "sqlite+aiosqlite:////var/lib/sipproxy/proxy.db"),
        (
            "postgres://opensips:pw@db.example:5432/opensips",
            "postgresql+asyncpg://opensips:pw@db.example:5432/opensips",
        ),
        ("postgresql://u:p@127.0.0.1/db", "postgresql+asyncpg://u:p@127.0.0.1/db"),
        (
            "mysql://opensips:opensipsrw@localhost/opensips",
            "mysql+aiomysql://opensips:opensipsrw@localhost/opensips",
        ),
        ("mysql://u:p%40ss@h:3307/d", "mysql+aiomysql://u:p%40ss@h:3307/d"),
    ],
)
def test_conversions(given: str, expected: str) -> None:
    assert to_sqlalchemy_url(given) == expected


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("oracle://u:p@h/db", "unsupported scheme"),
        ("postgres://u:p@h", "missing database"),
        ("mysql://u:p@/db", "missing host"),
        ("postgres://u:p@h:notaport/db", "bad port"),
        ("sqlite://", "sqlite:///path"),
        ("just-a-path.db", "scheme"),
    ],
)
def test_bad_urls_name_the_problem(given: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        to_sqlalchemy_url(given)

"""OpenSIPS-style db_url to SQLAlchemy async URL."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL

_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
}


def to_sqlalchemy_url(db_url: str) -> str:
    """`sqlite:///path` (relative; `sqlite:////abs` absolute, as SQLAlchemy), `postgres://u:p@h[:port]/db`,
    `postgresql://...`, `mysql://u:p@h[:port]/db`. Raises ValueError naming the problem."""
    if not isinstance(db_url, str) or "://" not in db_url:
        raise ValueError(f"db_url {db_url!r}: expected scheme://... (sqlite, postgres, mysql)")
    scheme, _, rest = db_url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"db_url {db_url!r}: sqlite needs sqlite:///path")
        return "sqlite+aiosqlite:///" + rest[1:]
    driver = _DRIVERS.get(scheme)
    if driver is None:
        raise ValueError(f"db_url {db_url!r}: unsupported scheme {scheme!r} (sqlite, postgres, mysql)")
    parts = urlsplit(db_url)
    if not parts.hostname:
        raise ValueError(f"db_url {db_url!r}: missing host")
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise ValueError(f"db_url {db_url!r}: missing database name")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"db_url {db_url!r}: bad port") from exc
    url = URL.create(
        driver,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        database=unquote(database),
    )
    return url.render_as_string(hide_password=False)

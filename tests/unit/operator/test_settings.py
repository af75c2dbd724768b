"""Settings from flags and environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipoperator.settings import DEFAULT_PROXY_SELECTOR, SettingsError, load, parse_selector


def test_defaults() -> None:
    s = load([], {"SIPSOCKETS_DB_URL": "sqlite:///x.db"})
    assert (s.table_name, s.tls_table_name) == ("sockets", "tls_mgm")
    assert s.proxy_selector == DEFAULT_PROXY_SELECTOR
    assert (s.mi_port, s.mi_root, s.resync_period, s.mi_timeout) == (8888, "mi", 60.0, 5.0)
    assert s.webhook_listen == ""
    assert s.health_listen == "0.0.0.0:8080"
    assert s.lease_name == "sipsockets-operator"
    # client-go's defaults
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (15.0, 10.0, 2.0)


def test_lease_settings_from_flags_and_environment() -> None:
    env = {
        "SIPSOCKETS_DB_URL": "sqlite:///x.db",
        "SIPSOCKETS_LEASE_NAME": "sbc-a",
        "SIPSOCKETS_RETRY_PERIOD": "1",
    }
    s = load(["--lease-duration", "30", "--renew-deadline", "20"], env)
    assert (s.lease_name, s.lease_duration, s.renew_deadline, s.retry_period) == ("sbc-a", 30.0, 20.0, 1.0)


def test_flag_wins_over_environment(tmp_path: Path) -> None:
    env = {
        "SIPSOCKETS_DB_URL": "sqlite:///env.db",
        "SIPSOCKETS_NAMESPACE": "env",
        "SIPSOCKETS_MI_PORT": "9000",
    }
    s = load(["--namespace", "flag", "--mi-port", "9001"], env)
    assert (s.namespace, s.mi_port, s.db_url) == ("flag", 9001, "sqlite:///env.db")


def test_the_tls_domains_table_is_named_like_the_proxys_tls_mgm_table_name() -> None:
    s = load([], {"SIPSOCKETS_DB_URL": "sqlite:///x.db", "SIPSOCKETS_TLS_TABLE_NAME": "tls_domains"})
    assert s.tls_table_name == "tls_domains"


def test_database_url_from_a_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "url"
    f.write_text("postgres://u:p@db/sockets\n")
    assert load([], {"SIPSOCKETS_DB_URL_FILE": str(f)}).db_url == "postgres://u:p@db/sockets"


def test_mi_token_is_read_from_its_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert load(["--mi-token-file", str(f)], {"SIPSOCKETS_DB_URL": "sqlite:///x"}).mi_token() == "s3cret"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "database URL"),
        (["--db-url", "sqlite:///x", "--log-format", "xml"], "SIPSOCKETS_LOG_FORMAT"),
        (["--db-url", "sqlite:///x", "--webhook-listen", "0.0.0.0:9443"], "webhook-cert-file"),
        (["--db-url", "sqlite:///x", "--resync-period", "soon"], "SIPSOCKETS_RESYNC_PERIOD"),
        (["--db-url", "sqlite:///x", "--proxy-selector", "app!=x"], "SIPSOCKETS_PROXY_SELECTOR"),
        (["--db-url", "sqlite:///x", "--lease-name", "Not_A_Name"], "SIPSOCKETS_LEASE_NAME"),
        # A leader that may write as long as a candidate waits is no fence.
        (["--db-url", "sqlite:///x", "--renew-deadline", "15"], "longer than the renew deadline"),
        (["--db-url", "sqlite:///x", "--retry-period", "9"], "1.2 times the retry period"),
        (["--db-url", "sqlite:///x", "--lease-duration", "0.5"], "SIPSOCKETS_LEASE_DURATION"),
    ],
)
def test_bad_settings_name_the_setting(argv: list[str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load(argv, {})


def test_selector() -> None:
    assert parse_selector("a=b, c==d") == {"a": "b", "c": "d"}

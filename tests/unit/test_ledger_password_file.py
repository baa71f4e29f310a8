"""TACHO_LEDGER_PASSWORD_FILE: the PostgreSQL ledger's password from a secret file, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from api.bootstrap import open_store, postgres_url
from api.settings import Settings
from domain.errors import ConfigError


def test_the_password_from_the_file_joins_the_url_percent_encoded(tmp_path: Path) -> None:
    secret = tmp_path / "pg_password"
    secret.write_text("p@ss w:/rd%\n")  # as `echo ... > file` leaves it
    url = postgres_url("postgresql://tacho@postgres:5432/ledger?sslmode=disable", secret)
    assert conninfo_to_dict(url) == {"user": "tacho", "password": "p@ss w:/rd%", "host": "postgres",
                                     "port": "5432", "dbname": "ledger", "sslmode": "disable"}
    assert postgres_url("postgresql://tacho@postgres/ledger", None) == "postgresql://tacho@postgres/ledger"


@pytest.mark.parametrize(("content", "url", "message"), [
    (None, "postgresql://tacho@db/ledger", "cannot read it"),
    ("\n", "postgresql://tacho@db/ledger", "is empty"),
    ("secret", "postgresql://tacho:other@db/ledger", "keep one"),
])
def test_a_bad_password_file_is_a_clear_error_that_never_shows_a_password(
        tmp_path: Path, content: str | None, url: str, message: str) -> None:
    secret = tmp_path / "pg_password"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        postgres_url(url, secret)
    assert "secret" not in str(e.value).replace(str(tmp_path), "") and "other" not in str(e.value)


def test_a_password_file_without_a_postgresql_ledger_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ledger_password_file=tmp_path / "pw")
    with pytest.raises(ConfigError, match="names no PostgreSQL ledger"):
        open_store(settings)

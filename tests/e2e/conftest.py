"""Fixtures of the end-to-end tests: the console server (real uvicorn on 127.0.0.1)."""

from tests.e2e.console_support import console_server  # noqa: F401 - a fixture

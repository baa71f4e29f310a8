"""The OPA harness fails loudly when opa cannot be built (the fixture turns this into a failed
test, never a skip)."""

from __future__ import annotations

import pytest

from tests.harness import opa as harness


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """The harness pointed at an empty cache: nothing built yet."""
    monkeypatch.setattr(harness, "ROOT", tmp_path / "opa")
    monkeypatch.setattr(harness, "LOCK", tmp_path / "opa.lock")
    return tmp_path


def test_without_go_opa_is_unavailable_and_the_build_says_why(empty_cache, monkeypatch):
    monkeypatch.setattr(harness, "go_binary", lambda: None)
    assert harness.unavailable_reason() == (
        "go not found (needed once to build opa; scripts/ci-prereqs.sh)")
    with pytest.raises(RuntimeError, match="go not found: cannot build opa"):
        harness.build()


def test_a_failed_go_install_is_an_error_with_go_output(empty_cache, monkeypatch):
    if harness.go_binary() is None:
        pytest.fail("go is needed for this test (scripts/ci-prereqs.sh installs it)")
    monkeypatch.setattr(harness, "VERSION", "v0.0.0-does-not-exist")
    monkeypatch.setenv("GOPROXY", "off")  # fail at once, without the network
    with pytest.raises(RuntimeError, match=r"go install of opa v0\.0\.0-does-not-exist failed "
                       r"\(1\):\n.*module lookup disabled"):
        harness.build()
    assert not harness.built()


def test_an_opa_server_needs_something_to_serve(tmp_path):
    with pytest.raises(ValueError, match="needs a bundle directory, policy paths or a configuration"):
        harness.OpaServer(tmp_path)

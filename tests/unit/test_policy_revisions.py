"""Policy revisions as records: checking files, digests, OPA bundles, diffs, and the fold."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from ingest.policies import (
    PolicyFilesError,
    PolicyFold,
    Revision,
    bundle_bytes,
    check_fail_closed,
    check_files,
    diff,
    files_digest,
    is_revision,
)

REGO = "package tachograph\n\ndefault decision := {\"decision\": \"allow\", \"reason\": \"ok\"}\n"


def _rev(files: dict[str, str], revision: str = "1-abcdefabcdef") -> Revision:
    return Revision(revision, 7, files, files_digest(files), ("write",), "pat", "2026-12-06T00:00:00Z",
                    None, None)


@pytest.mark.parametrize(("files", "problem"), [
    ({}, "at least one .rego"),
    ({"data.json": "{}"}, "at least one .rego"),
    ({"../escape.rego": REGO}, "relative path"),
    ({"/abs.rego": REGO}, "relative path"),
    ({".hidden.rego": REGO}, "relative path"),
    ({"a/../b.rego": REGO}, "relative path"),
    ({"notes.txt": "x", "p.rego": REGO}, "only .rego files and data.json"),
    ({"p.rego": REGO, "data.json": "[1]"}, "must hold a JSON object"),
    ({"p.rego": REGO, "data.json": "{"}, "is not JSON"),
    ({"p.rego": "x" * (1_048_577)}, "over 1048576 bytes"),
    ({f"p{i}.rego": REGO for i in range(101)}, "at most 100"),
])
def test_files_that_cannot_be_a_revision_are_refused_naming_why(files: dict[str, str], problem: str) -> None:
    with pytest.raises(PolicyFilesError, match=problem):
        check_files(files)


def test_files_are_kept_sorted_and_the_digest_ignores_their_order() -> None:
    a = check_files({"z.rego": REGO, "lib/a.rego": REGO, "lib/data.json": '{"limit": 3}'})
    assert list(a) == ["lib/a.rego", "lib/data.json", "z.rego"]
    b = {"lib/data.json": '{"limit": 3}', "z.rego": REGO, "lib/a.rego": REGO}
    assert files_digest(a) == files_digest(b)
    assert files_digest(a) != files_digest({**b, "z.rego": REGO + "\n"})
    assert files_digest(a).startswith("sha256:") and len(files_digest(a)) == 71


def test_fail_closed_takes_known_side_effects_once_in_order() -> None:
    assert check_fail_closed(["write", "read", "write"]) == ("read", "write")
    assert check_fail_closed([]) == ()
    with pytest.raises(PolicyFilesError, match="not \\['delete'\\]"):
        check_fail_closed(["delete"])


def test_revision_ids_have_one_shape() -> None:
    assert is_revision("3-5f2a9c1e0b7d")
    for bad in ("0-5f2a9c1e0b7d", "3-5F2A9C1E0B7D", "3-5f2a", "../x", "3-5f2a9c1e0b7d/", ""):
        assert not is_revision(bad)


def test_the_bundle_is_a_tarball_whose_manifest_names_the_revision_and_is_byte_stable() -> None:
    rev = _rev({"policy.rego": REGO, "data.json": '{"limit": 5}'})
    raw = bundle_bytes(rev, "acme")
    assert raw == bundle_bytes(rev, "acme"), "the same revision, the same bytes (a stable ETag body)"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"/.manifest", "/policy.rego", "/data.json"}
        assert all(m.mtime == 0 for m in members.values())
        manifest = json.loads(tar.extractfile("/.manifest").read())  # type: ignore[union-attr]
        assert manifest["revision"] == "1-abcdefabcdef"
        assert manifest["metadata"] == {"workspace": "acme", "digest": rev.digest}
        assert tar.extractfile("/policy.rego").read().decode() == REGO  # type: ignore[union-attr]


def test_a_diff_says_per_file_what_changed() -> None:
    old = _rev({"a.rego": "package a\nx := 1\n", "b.rego": "package b\n", "gone.rego": "package g\n"})
    new = _rev({"a.rego": "package a\nx := 2\n", "b.rego": "package b\n", "new.rego": "package n\n"},
               "2-0123456789ab")
    by_path = {f["path"]: f for f in diff(old, new)}
    assert {p: f["status"] for p, f in by_path.items()} == {
        "a.rego": "changed", "b.rego": "same", "gone.rego": "removed", "new.rego": "added"}
    a = by_path["a.rego"]
    assert "-x := 1" in a["diff"] and "+x := 2" in a["diff"] and (a["added"], a["removed"]) == (1, 1)
    assert a["diff"][0] == "--- 1-abcdefabcdef/a.rego" and a["diff"][1] == "+++ 2-0123456789ab/a.rego"
    assert by_path["b.rego"]["diff"] == []
    assert [f["status"] for f in diff(None, new)] == ["added", "added", "added"]


def test_the_fold_knows_every_revision_the_one_in_force_and_every_one_that_ever_was() -> None:
    fold = PolicyFold("acme")
    actor = {"name": "Pat", "key_id": "k1"}

    def published(n: int, rev: str) -> dict[str, object]:
        return {"type": "policy.published", "actor": actor, "time": f"t{n}",
                "data": {"revision": rev, "digest": "sha256:x", "files": {"p.rego": REGO},
                         "fail_closed": ["read", "write"], "checked_with": "opa 1.22.4"}}

    def activated(n: int, rev: str, prev: str | None) -> dict[str, object]:
        return {"type": "policy.activated", "actor": actor, "time": f"t{n}",
                "data": {"revision": rev, "previous": prev}}

    assert fold.active is None and fold.activation is None
    fold.apply([(1, published(1, "1-aaaaaaaaaaaa")), (2, published(2, "2-bbbbbbbbbbbb")),
                (3, activated(3, "1-aaaaaaaaaaaa", None)), (5, activated(5, "2-bbbbbbbbbbbb", "1-aaaaaaaaaaaa")),
                (6, published(6, "3-cccccccccccc"))])
    assert fold.active is not None and fold.active.revision == "2-bbbbbbbbbbbb"
    assert fold.active.fail_closed == ("read", "write")
    assert fold.active.published_by == "Pat (apikey:k1)"
    assert fold.ever_active() == {"1-aaaaaaaaaaaa", "2-bbbbbbbbbbbb"}
    assert fold.last_index == 6
    fold.apply([(9, activated(9, "1-aaaaaaaaaaaa", "2-bbbbbbbbbbbb"))])  # a rollback
    assert fold.active.revision == "1-aaaaaaaaaaaa" and fold.activation.previous == "2-bbbbbbbbbbbb"  # type: ignore[union-attr]


def test_opa_config_points_bundles_and_decision_logs_at_the_apis_routes() -> None:
    """OPA joins a service's URL and a resource (``url + "/" + resource``, leading slash
    dropped): both must land on the API's routes, not under a doubled ``/v1``."""
    from api.cli_policy import opa_config

    config = opa_config("https://tacho.example/", "${TACHO_OPA_KEY}")
    service = config["services"]["tachograph"]
    assert service["credentials"] == {"bearer": {"token": "${TACHO_OPA_KEY}"}}

    def url(resource: str) -> str:
        return service["url"].rstrip("/") + "/" + resource.lstrip("/")

    assert url(config["bundles"]["tachograph"]["resource"]) == "https://tacho.example/v1/policy/bundle.tar.gz"
    assert url(config["decision_logs"]["resource"]) == "https://tacho.example/v1/opa/logs"
    assert config["bundles"]["tachograph"]["polling"]["long_polling_timeout_seconds"] > 0
    assert "decision_logs" not in opa_config("https://tacho.example", "k", decision_logs=False)

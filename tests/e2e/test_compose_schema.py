"""docker-compose.yml is a valid Compose file, and everything it names exists: secrets, volumes,
settings the code reads, CLI commands."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from api.settings import Settings
from tests.cli_support import ROOT, tacho

SCHEMA = ROOT / "tests" / "vendor" / "compose-spec" / "compose-spec.json"
SCHEMA_SHA256 = "56bab44c85c0ce8affb74474950293f37d510673283a243bcd7eeadb900fa35c"
COMPOSE = ROOT / "docker-compose.yml"
# variables the code reads outside Settings (os.environ) that a deployment may set
OTHER_TACHO_VARIABLES = {"TACHO_OPA_BIN", "TACHO_API_URL", "TACHO_API_KEY"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def tacho_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {name: s for name, s in doc["services"].items() if "build" in s}


def validator() -> jsonschema.protocols.Validator:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "the vendored schema changed"
    schema = yaml.safe_load(raw)
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("mutation", [
    lambda d: d["services"]["api"].update(ports="8080:8080"),  # ports must be a list
    lambda d: d["services"]["ingest"].update(deploy={"replicas": "three"}),
    lambda d: d["services"]["api"].update(depends_on={"keys": {"condition": "service_done"}}),
    lambda d: d.update(secret={"pg_password": {"file": "x"}}),  # unknown top-level key
])
def test_the_schema_catches_what_compose_would_refuse(mutation: Any) -> None:
    doc = compose()
    mutation(doc)
    assert list(validator().iter_errors(doc)), "the schema accepted a broken file"


def test_every_secret_volume_and_dependency_a_service_names_is_declared() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], f"{name}: secret {secret} is not declared"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in doc["volumes"], f"{name}: volume {source} is not declared"
        for dep in service.get("depends_on", {}):
            assert dep in doc["services"], f"{name}: depends on unknown {dep}"
    used = {m.split(":", 1)[0] for s in doc["services"].values() for m in s.get("volumes", [])}
    assert used == set(doc["volumes"]), "a declared volume is used by no service"
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("./secrets/"), "secret files live in ./secrets (ignored by git)"


def test_every_tachograph_variable_is_a_setting_the_code_reads() -> None:
    settings = {f"TACHO_{name.upper()}" for name in Settings.model_fields}
    known = settings | OTHER_TACHO_VARIABLES
    sources = "".join(p.read_text() for d in ("api", "ingest", "projections", "replay")
                      for p in (ROOT / d).rglob("*.py"))
    for variable in OTHER_TACHO_VARIABLES:
        assert f'"{variable}"' in sources, f"{variable} is read nowhere any more"
    for name, service in tacho_services(compose()).items():
        for variable in service.get("environment", {}):
            assert variable in known, f"{name}: {variable} is read by no code"


def test_secrets_and_paths_in_the_environment_are_mounted() -> None:
    doc = compose()
    for name, service in tacho_services(doc).items():
        targets = [m.split(":")[1] for m in service.get("volumes", [])]
        targets += [f"/run/secrets/{s}" for s in service.get("secrets", [])]
        env = service.get("environment", {})
        for variable in ("TACHO_SIGNING_KEY", "TACHO_LEDGER_PASSWORD_FILE", "TACHO_ANALYTICS_DIR"):
            if variable in env:
                assert any(env[variable] == t or env[variable].startswith(t + "/") for t in targets), (
                    f"{name}: {variable}={env[variable]} is on no mounted volume or secret")


def test_every_command_is_one_the_cli_knows(tmp_path: Path) -> None:
    """Each tachograph service's command, with --help, is accepted by the CLI (ENTRYPOINT tacho)."""
    entrypoint = re.search(r'^ENTRYPOINT \["tacho"\]$', (ROOT / "Dockerfile").read_text(), re.M)
    assert entrypoint, "the Dockerfile's entry point is the tacho CLI"
    for name, service in tacho_services(compose()).items():
        command = service["command"]
        assert isinstance(command, list), f"{name}: command as a list (exec form, no shell)"
        words = [w for w in command if not w.startswith("-")][:1]
        out = tacho(tmp_path, *words, "--help").stdout
        for option in (w for w in command if w.startswith("--")):
            assert option in out, f"{name}: `tacho {words[0]}` has no option {option}"

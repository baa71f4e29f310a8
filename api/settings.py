"""All settings in one place (environment variables ``TACHO_*``); nothing is read at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.witness import WitnessConfig, parse_witnesses


class Settings(BaseSettings):
    """Tachograph settings; every field can be set as ``TACHO_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TACHO_", extra="ignore")

    data_dir: Path = Field(Path(".tacho"), description="where the embedded ledger, keys and views live")
    signing_key: Path | None = Field(
        None,
        description="the ledger's private signing key file; default data_dir/keys/ledger.skey. Put it "
        "outside the data directory (another volume, a secret mount) so that whoever takes the "
        "directory cannot re-sign; retired keys are kept beside it",
    )
    ledger_url: str | None = Field(
        None, description="postgresql://... for a shared ledger; default: SQLite in data_dir"
    )
    ledger_password_file: Path | None = Field(
        None,
        description="a file holding the PostgreSQL ledger's password (a secret mount such as "
        "/run/secrets/pg_password; trailing newlines are ignored), for a TACHO_LEDGER_URL that "
        "names none",
    )
    analytics_dir: Path | None = Field(
        None,
        description="a directory of read-only analytics snapshots that `tacho project --follow "
        "--publish DIR` keeps current: the API and console read the newest one there instead "
        "of data_dir/analytics.duckdb, so no process reads a DuckDB file another one writes",
    )
    checkpoint_every: int = Field(10_000, ge=1, description="sign a checkpoint every N entries")
    checkpoint_interval_s: float = Field(5.0, gt=0, description="...and at least every T seconds")
    verify_interval_s: float = Field(
        1.0, gt=0, le=3600,
        description="tacho serve: how often the verification status catches up with the ledger "
        "(only what was appended and signed since the last round is verified)",
    )
    verify_full_every_s: float = Field(
        86400.0, ge=0, le=30 * 86400,
        description="tacho serve: how often the verification status verifies the whole ledger again "
        "(0: only when the server starts); the rounds between verify only what is new and read no "
        "verified entry again",
    )
    max_held: int = Field(10_000, ge=0, description="events held while waiting for a seq gap")
    held_timeout_s: float = Field(60.0, gt=0, description="quarantine held events after T seconds")
    max_held_per_workspace: int = Field(
        1_000, ge=0, description="events one workspace may hold (its share of max_held)"
    )
    quarantine_bytes_per_workspace: int = Field(
        256 * 2**20, ge=0,
        description="raw bytes the quarantine keeps per workspace; beyond, items keep a 1 KiB preview",
    )
    quarantine_bytes_unattributed: int = Field(
        64 * 2**20, ge=0, description="the same for items that name no workspace (e.g. not JSON)"
    )
    approval_decisions: Literal["agent", "person"] = Field(
        "person",
        description="person (the default): every approval.decided must repeat a person's decision made "
        "through the platform (a replay's, through replayed_from, one made in the run it replays), "
        "and approval ids are unique per workspace (permanent for the ledger once set); agent: "
        "agents' own decisions are accepted, for ledgers of older agents until they move to the runtime",
    )
    kafka_bootstrap: str | None = Field(None, description="HOST:PORT of Kafka; none: dev broker")
    topic: str = Field("agent-events", description="the events topic")
    ingest_instance_id: str | None = Field(
        None, max_length=100,
        description="tacho ingest: this worker's stable name in its consumer group (default: "
        "<host name>-<n>, the first free n); a restart with the same one resumes at once",
    )
    api_max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="HTTP API: largest request body (after gzip), bytes"
    )
    api_max_batch: int = Field(10_000, ge=1, description="HTTP API: most events in one request")
    replay_agents: list[str] = Field(
        ["examples.triage:triage", "examples.invoices:match_invoice"],
        description="agents (module:function) the HTTP API may replay; JSON list in the environment",
    )
    read_wait_s: float = Field(
        10.0, gt=0, le=600, description="HTTP API: how long a read waits for the read models (run "
        "index, console board) to reach the ledger as it stood when the read began, before 503",
    )
    replay_queue: int = Field(8, ge=1, description="HTTP API: replays queued or running at once")
    replay_workers: int = Field(2, ge=1, description="runs replayed in parallel within one replay")
    prices: Path | None = Field(
        None, description="a JSON price file over genai-prices' bundled catalogue and the simulated "
        'models ({"model": {"input_per_m": "0.4", "output_per_m": "1.6"}}, USD per million '
        "tokens); prices OTLP model spans that carry no cost, and replays (docs/analytics.md)",
    )
    models: Path | None = Field(
        None, description="a models file (TOML or JSON) of OpenAI-compatible endpoints replays may "
        "call by name: base_url, model as served, api_key_env (the key stays in the environment), "
        "price or free = true, params (docs/replay.md#real-models)",
    )
    witnesses: str = Field(
        "", description="witnesses that cosign checkpoints: comma-separated URL=VKEY (c2sp.org/tlog-witness)"
    )
    witness_timeout_s: float = Field(5.0, gt=0, le=300, description="HTTP timeout of one witness request")
    witness_retry_max_s: float = Field(
        60.0, gt=0, description="longest wait between retries of a witness that is down"
    )
    witness_wait_s: float = Field(
        10.0, ge=0, description="`tacho import`/`checkpoint`: how long to wait for the witnesses' answers"
    )
    webhook_max_endpoints: int = Field(10, ge=1, le=1000, description="webhook endpoints per workspace")
    webhook_max_attempts: int = Field(12, ge=1, le=100, description="webhook: attempts before a delivery fails")
    webhook_backoff_s: float = Field(10.0, gt=0, description="webhook: wait before the first retry (doubles)")
    webhook_backoff_max_s: float = Field(3600.0, gt=0, description="webhook: longest wait between retries")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="webhook: HTTP timeout of each phase")
    webhook_workers: int = Field(16, ge=1, le=256, description="webhook: endpoints sent to at once")
    webhook_allow_private: bool = Field(
        False, description="webhook: allow endpoints on loopback, private and link-local addresses"
    )

    def witness_list(self) -> list[WitnessConfig]:
        """``witnesses`` parsed (ConfigError naming a bad entry)."""
        return parse_witnesses(self.witnesses)

    @property
    def key_path(self) -> Path:
        """Private signing key file (mode 0600): ``signing_key`` or the data directory's."""
        return self.signing_key if self.signing_key is not None else self.data_dir / "keys" / "ledger.skey"

    @property
    def sqlite_path(self) -> Path:
        """The embedded SQLite ledger file."""
        return self.data_dir / "ledger.db"

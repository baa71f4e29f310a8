"""All settings in one place (environment variables ``TACHO_*``); nothing is read at import."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    checkpoint_every: int = Field(10_000, ge=1, description="sign a checkpoint every N entries")
    checkpoint_interval_s: float = Field(5.0, gt=0, description="...and at least every T seconds")
    max_held: int = Field(10_000, ge=0, description="events held while waiting for a seq gap")
    held_timeout_s: float = Field(60.0, gt=0, description="quarantine held events after T seconds")
    kafka_bootstrap: str | None = Field(None, description="HOST:PORT of Kafka; none: dev broker")
    topic: str = Field("agent-events", description="the events topic")
    api_max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="HTTP API: largest request body (after gzip), bytes"
    )
    api_max_batch: int = Field(10_000, ge=1, description="HTTP API: most events in one request")
    replay_agents: list[str] = Field(
        ["examples.triage:triage", "examples.invoices:match_invoice"],
        description="agents (module:function) the HTTP API may replay; JSON list in the environment",
    )
    replay_queue: int = Field(8, ge=1, description="HTTP API: replays queued or running at once")
    replay_workers: int = Field(2, ge=1, description="runs replayed in parallel within one replay")

    @property
    def key_path(self) -> Path:
        """Private signing key file (mode 0600): ``signing_key`` or the data directory's."""
        return self.signing_key if self.signing_key is not None else self.data_dir / "keys" / "ledger.skey"

    @property
    def sqlite_path(self) -> Path:
        """The embedded SQLite ledger file."""
        return self.data_dir / "ledger.db"

"""JSONL import: one event per line, through the same validate-and-append path as Kafka."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from domain.ledger import Ledger
from domain.ports import Incoming, Source


@dataclass
class ImportTotals:
    """What an import did, in counts."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    held: int = 0
    lines: int = 0
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """Counts as JSON (keys accepted, duplicates, quarantined, held, lines)."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "held": self.held,
            "lines": self.lines,
        }


def read_lines(f: BinaryIO, name: str) -> Iterator[Incoming]:
    """Non-blank lines of a JSONL stream as incoming items (line numbers from 1)."""
    for n, line in enumerate(f, start=1):
        raw = line.rstrip(b"\r\n")
        if raw.strip():
            yield Incoming(raw, Source(kind="file", name=name, line=n))


def import_jsonl(
    ledger: Ledger,
    path: Path,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> ImportTotals:
    """Append every line of a JSONL file; sign a checkpoint at the end."""
    totals = ImportTotals()
    batch: list[Incoming] = []

    def flush() -> None:
        report = ledger.append(batch)
        totals.accepted += report.accepted
        totals.duplicates += report.duplicates
        totals.quarantined += report.quarantined
        totals.held += report.held
        totals.reasons.extend(o.reason or "" for o in report.results if o.status == "quarantined")
        totals.lines += len(batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    with path.open("rb") as f:
        for item in read_lines(f, path.name):
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    ledger.checkpoint(force=True)
    return totals

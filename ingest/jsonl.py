"""JSONL import: one event per line, through the same validate-and-append path as Kafka."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from domain.ledger import Ledger, Packed, Parsed, unpack, validate_packed
from domain.ports import Incoming, Source
from ingest.gcpolicy import batch_collection, tune_for_batches


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


def _batches(path: Path, batch_size: int) -> Iterator[list[Incoming]]:
    batch: list[Incoming] = []
    with path.open("rb") as f:
        for item in read_lines(f, path.name):
            batch.append(item)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def import_jsonl(
    ledger: Ledger,
    path: Path,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    parallel: bool | None = None,
) -> ImportTotals:
    """Append every line of a JSONL file; sign a checkpoint at the end.

    With ``parallel`` (default: on machines with more than one core), the next batch is
    validated in a second process while this one appends the current batch.
    """
    totals = ImportTotals()
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1 and path.stat().st_size > 4_000_000

    def add(batch: list[Incoming], parsed: list[Parsed] | None) -> None:
        report = ledger.append(batch, parsed=parsed)
        totals.accepted += report.accepted
        totals.duplicates += report.duplicates
        totals.quarantined += report.quarantined
        totals.held += report.held
        totals.reasons.extend(o.reason or "" for o in report.results if o.status == "quarantined")
        totals.lines += len(batch)
        if progress is not None:
            progress(len(batch))

    with batch_collection():
        if parallel:
            _import_parallel(path, batch_size, add)
        else:
            for batch in _batches(path, batch_size):
                add(batch, None)
    ledger.checkpoint(force=True)
    return totals


def _import_parallel(
    path: Path, batch_size: int, add: Callable[[list[Incoming], list[Parsed] | None], None]
) -> None:
    """Validate the next batches in a second process while this one appends."""
    with ProcessPoolExecutor(1, initializer=tune_for_batches) as pool:
        # two batches queued ahead, so the validator never idles while this process appends
        pending: deque[tuple[list[Incoming], Future[list[Packed]]]] = deque()
        for batch in _batches(path, batch_size):
            pending.append((batch, pool.submit(validate_packed, [i.raw for i in batch])))
            if len(pending) > 2:
                first = pending.popleft()
                add(first[0], _zip(first))
        while pending:
            first = pending.popleft()
            add(first[0], _zip(first))


def _zip(pending: tuple[list[Incoming], Future[list[Packed]]]) -> list[Parsed]:
    batch, fut = pending
    return [unpack(item, result) for item, result in zip(batch, fut.result(), strict=True)]

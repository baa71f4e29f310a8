"""Errors raised by the projections area (all are TachographError subclasses)."""

from __future__ import annotations

from domain.errors import TachographError


class ProjectionError(TachographError):
    """The analytics database cannot be brought in line with the ledger."""


class AnalyticsBusyError(ProjectionError):
    """Another process holds the analytics DuckDB file (one writer at a time)."""


class LedgerMismatchError(ProjectionError):
    """The analytics database was projected from a different or longer ledger: rebuild it."""


class LakeError(ProjectionError):
    """A Parquet lake directory is unusable (foreign files, unreadable manifest)."""


class ReportError(ProjectionError):
    """A report was asked for with options it does not support."""


class AnalyticsMissingError(ProjectionError):
    """There are no analytics to read yet: nothing projected, or no snapshot published."""

"""Errors raised by the HTTP layer itself (mapped to status codes in ``api.app``)."""

from __future__ import annotations

from domain.errors import TachographError


class BodyTooLarge(TachographError):
    """A request body, its decompressed form or its batch is over the limit (HTTP 413)."""


class UnsupportedMedia(TachographError):
    """A request body's content type or encoding is not one the endpoint reads (HTTP 415)."""


class BadBody(TachographError):
    """A request body cannot be parsed at all (HTTP 400)."""


class Unavailable(TachographError):
    """A part the endpoint needs (projections, replay) is not available here (HTTP 503)."""


class BadParameter(TachographError):
    """A query parameter passes its pattern but means nothing (e.g. 2026-02-30) (HTTP 422)."""

"""Errors whose message is meant for the user."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or a request that cannot be served now. The message is the whole reply to the
    user, and says what to do."""

"""The one shape of "this input is refused": a ledger reason and a detail for people.

Decoding, file confinement and remote fetching each refuse inputs for their own reasons; they
share this base so that every caller can turn any refusal into a ledger row, or a message, the
same way (``exc.reason``, ``exc.detail``).
"""

from __future__ import annotations


class Rejection(Exception):
    """An input the platform will not take, with the ledger reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def describe(exc: BaseException) -> str:
    """A refusal as ``"reason: detail"``; any other error as ``"TypeName: message"``."""
    if isinstance(exc, Rejection):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

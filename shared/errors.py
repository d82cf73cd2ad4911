"""The root of the errors tokenfan raises on purpose. The tree, and what each
one becomes for a client, is in api/errors.py's docstring."""

from __future__ import annotations


class TokenfanError(Exception):
    """Every error tokenfan's service raises on purpose (not a bug, not a library's)."""

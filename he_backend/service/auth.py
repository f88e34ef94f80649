"""Bearer tokens for the HTTP service, each with a quota of sessions held at once.

A token file has one token per line, optionally followed by its session quota::

    # comments and blank lines are ignored
    3f1c0b...e9   4
    a7d2...51

Tokens are compared in constant time; only their SHA-256 is kept in memory.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tokens:
    """Known tokens (by SHA-256) and the number of sessions each may hold at once."""

    quotas: dict[str, int]

    @classmethod
    def from_file(cls, path: str | Path, default_quota: int) -> "Tokens":
        """Parse a token file (see the module docstring); ``default_quota`` for lines without one."""
        quotas: dict[str, int] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()) or len(fields[0]) < 16:
                raise ValueError(f"{path}:{number}: expected 'TOKEN [SESSIONS]' with a token of at least 16 "
                                 "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
            quotas[_digest(fields[0])] = int(fields[1]) if len(fields) == 2 else default_quota
        if not quotas:
            raise ValueError(f"{path} holds no token")
        return cls(quotas)

    def owner(self, authorization: str | None) -> str | None:
        """The digest of a valid ``Authorization: Bearer TOKEN`` header, else ``None``."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _digest(token.strip())
        return next((known for known in self.quotas if hmac.compare_digest(known, digest)), None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

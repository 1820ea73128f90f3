"""Upload tokens: one vantage each, stored only as hashes, revocable.

Why SQLite and not the DuckDB store: ``wallwatch token new`` must work while the collector
runs, and DuckDB allows one writing process per file; SQLite is built for many short
writers. A token is 32 random bytes (urlsafe base64); only its SHA-256 is kept, so a
stolen data directory does not leak a credential.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

#: Vantage names: what measurements carry in ``vantage`` and URLs show.
VANTAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Token:
    vantage: str
    #: The first 8 hex digits of the hash: how ``token list`` and ``revoke`` name it.
    ident: str
    created: float
    revoked: float | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The token table of a collector's data directory."""

    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.path = data / "tokens.sqlite"
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, vantage TEXT NOT NULL, "
                       "created REAL NOT NULL, revoked REAL)")  # fmt: skip

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def new(self, vantage: str) -> str:
        """A new token for ``vantage``; the token itself is returned once and never stored."""
        if not VANTAGE.match(vantage):
            raise ValueError(f"vantage {vantage!r}: 1-64 of A-Z a-z 0-9 . _ / -")
        token = secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, NULL)", (_hash(token), vantage, time.time())
            )
        return token

    def vantage_of(self, token: str) -> str | None:
        """The vantage a valid, unrevoked token uploads as; None otherwise."""
        with self._db() as db:
            row = db.execute("SELECT vantage FROM tokens WHERE hash = ? AND revoked IS NULL",
                             (_hash(token),)).fetchone()  # fmt: skip
        return str(row[0]) if row else None

    def list(self) -> list[Token]:
        with self._db() as db:
            rows = db.execute(
                "SELECT hash, vantage, created, revoked FROM tokens ORDER BY created"
            ).fetchall()
        return [Token(r[1], r[0][:8], r[2], r[3]) for r in rows]

    def revoke(self, ident: str) -> int:
        """Revoke the tokens whose hash starts with ``ident`` (or all of a vantage); how many."""
        if len(ident) < 6 and not VANTAGE.match(ident):
            raise ValueError("give at least 6 hex digits of the token's id, or a vantage name")
        with self._db() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked = ? WHERE revoked IS NULL AND (hash LIKE ? OR vantage = ?)",
                (time.time(), f"{ident}%" if len(ident) >= 6 else "\x00", ident),
            )
            return int(cursor.rowcount)

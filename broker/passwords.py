"""Mosquitto 2 password files, written without the ``mosquitto_passwd`` binary.

A line is ``username:$7$<iterations>$<base64 salt>$<base64 hash>``: PBKDF2-HMAC-SHA512 with a
12-byte salt and a 64-byte hash, exactly what ``mosquitto_passwd`` writes (checked by a test
against the real binary and broker). Files are replaced atomically, readable by the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from broker.errors import BrokerError

ITERATIONS = 101  # Mosquitto's default; passwords here are random tokens, not words
SALT_BYTES = 12


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    encoded_salt = base64.b64encode(salt).decode()
    return f"$7${iterations}${encoded_salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations), len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def new_password() -> str:
    """A random token: 192 bits, URL-safe (no ``:`` to confuse the file format)."""
    return secrets.token_urlsafe(24)


def read_password_file(path: Path) -> dict[str, str]:
    """username -> hash. A missing file is empty; a malformed line is an error naming it."""
    if not path.exists():
        return {}
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        user, separator, hashed = line.partition(":")
        if not separator or not user or not hashed.startswith("$"):
            raise BrokerError(f"{path}:{number}: not a 'user:hash' line")
        entries[user] = hashed
    return entries


def write_password_file(path: Path, entries: dict[str, str]) -> None:
    """Atomic replace (temp file, fsync, rename); mode 0640 so the broker user can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.writelines(f"{user}:{hashed}\n" for user, hashed in sorted(entries.items()))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o640)
    os.replace(temporary, path)

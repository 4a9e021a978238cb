"""Account provisioning: credentials in a Mosquitto password file, idempotently.

Rights come from the pattern ACL (``broker/config.py``): an account's username is its topic
level, so provisioning checks the name is a valid one and never needs to edit the ACL.
"""

from __future__ import annotations

from pathlib import Path

from broker.errors import BrokerError
from broker.passwords import (
    hash_password,
    new_password,
    read_password_file,
    verify_password,
    write_password_file,
)
from codec.envelope import IDENTIFIER


def check_account_name(name: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise BrokerError(
            f"account name {name!r} is not a valid topic level: use 1-128 of A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def provision_account(
    password_file: Path, name: str, *, password: str | None = None, rotate: bool = False
) -> str | None:
    """Ensure ``name`` can log in. Returns the new password, or None when the account
    already existed with a matching (or unspecified) password and ``rotate`` is false."""
    check_account_name(name)
    entries = read_password_file(password_file)
    existing = entries.get(name)
    unchanged = password is None or (existing is not None and verify_password(password, existing))
    if existing is not None and not rotate and unchanged:
        return None
    chosen = password if password is not None else new_password()
    entries[name] = hash_password(chosen)
    write_password_file(password_file, entries)
    return chosen


def remove_account(password_file: Path, name: str) -> bool:
    entries = read_password_file(password_file)
    if entries.pop(name, None) is None:
        return False
    write_password_file(password_file, entries)
    return True

"""Passwords: argon2id hashing (argon2-cffi) and the password policy."""

from __future__ import annotations

import functools
import pathlib

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gatehouse.kit.errors import ErrorCollector

MIN_LENGTH = 12
MAX_LENGTH = 256
COMMON_PASSWORDS = pathlib.Path(__file__).resolve().parent.parent / "data" / "common_passwords.txt"


@functools.cache
def common_passwords(path: pathlib.Path = COMMON_PASSWORDS) -> frozenset[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def check_policy(password: str, email: str, errs: ErrorCollector, field: str = "password") -> None:
    """Add one field violation per broken rule (length, email local part, common password)."""
    if len(password) < MIN_LENGTH:
        errs.add(field, f"must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        errs.add(field, f"must be at most {MAX_LENGTH} characters")
    local = email.strip().lower().partition("@")[0]
    if local and local in password.lower():
        errs.add(field, "must not contain the email's local part")
    if password.lower() in common_passwords():
        errs.add(field, "is a commonly used password")


class Hasher:
    """argon2id with configurable cost; ``verify`` also says when a hash should be upgraded."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int):
        self._ph = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        # Verified for unknown emails, so they cost the same time as a wrong password.
        self._dummy = self._ph.hash("gatehouse-dummy-password-for-timing")

    @property
    def parameters(self) -> str:
        ph = self._ph
        return f"argon2id t={ph.time_cost} m={ph.memory_cost}KiB p={ph.parallelism}"

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._ph.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def verify_dummy(self, password: str) -> None:
        self.verify(self._dummy, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._ph.check_needs_rehash(stored_hash)

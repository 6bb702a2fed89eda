"""Password hashing with Argon2id (PHC strings) and a rule for acceptable new passwords."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from common.errors import BadParameter

# OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
MEMORY_KIB = 19 * 1024
ITERATIONS = 2
LANES = 1
MIN_LENGTH = 8
MAX_LENGTH = 1024


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=32, iterations=ITERATIONS, lanes=LANES, memory_cost=MEMORY_KIB)


def hash_password(password: str) -> str:
    return _kdf(os.urandom(16)).derive_phc_encoded(password.encode("utf-8"))


# Verified against when the user does not exist, so both paths cost the same time.
_DUMMY = hash_password("not a real password, only for timing")


def verify_password(password: str, phc: str | None) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode("utf-8"), phc or _DUMMY)
    except (InvalidKey, ValueError):
        return False
    return phc is not None


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise BadParameter(f"the password must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        raise BadParameter(f"the password must be at most {MAX_LENGTH} characters long")

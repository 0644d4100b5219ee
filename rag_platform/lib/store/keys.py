"""API keys: generation, parsing, peppered hashing and constant-time verification.

A key is shown to its owner once, as ``rag_<key_id>_<secret>``:

- ``key_id``: 12 lowercase hex characters (48 random bits), the public lookup handle stored in
  clear text (it appears in logs and in ``rag-platform keys list``);
- ``secret``: ``secrets.token_urlsafe(32)``, i.e. 32 random bytes (256 bits) as 43 URL-safe
  base64 characters; never stored.

The store keeps ``HMAC-SHA256(pepper, secret)`` as 64 hex characters. The pepper
(``Settings.key_pepper``) is a server-side secret kept outside the database, so a leaked database
alone does not let anyone test candidate secrets offline. A plain (unsalted) keyed hash suffices
because the secret is uniformly random with 256 bits of entropy: a slow password hash (bcrypt,
argon2) protects low-entropy *passwords* and would only add latency to every request here
(the same reasoning as GitHub's and Stripe's token schemes).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

#: Prefix of every plaintext key (makes leaked keys greppable by secret scanners).
KEY_PREFIX = "rag"
#: Length of the public key id, in hex characters.
KEY_ID_HEX_CHARS = 12
#: Bytes of randomness in the secret (256 bits; the brief's floor is 128 bits).
SECRET_BYTES = 32

_KEY_RE = re.compile(
    rf"^{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{{KEY_ID_HEX_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{22,128}})$"
)
_MAX_KEY_CHARS = 200


def generate_api_key() -> tuple[str, str]:
    """Create a new random API key.

    Returns:
        ``(key_id, plaintext)``: the 12-hex-character lookup id and the full key
        ``rag_<key_id>_<secret>`` (the only time the secret exists outside the caller).
    """
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_api_key(plaintext: str) -> tuple[str, str] | None:
    """Split a plaintext key into ``(key_id, secret)``.

    Args:
        plaintext: What the client sent (e.g. the ``Authorization: Bearer`` value).

    Returns:
        ``(key_id, secret)``, or None when the string is not a well-formed key (wrong prefix,
        key id not 12 lowercase hex characters, secret not 22-128 URL-safe base64 characters,
        or longer than 200 characters). Never raises.
    """
    if not isinstance(plaintext, str) or len(plaintext) > _MAX_KEY_CHARS:
        return None
    match = _KEY_RE.match(plaintext.strip())
    if match is None:
        return None
    return match.group("key_id"), match.group("secret")


def hash_secret(secret: str, pepper: str) -> str:
    """``HMAC-SHA256(key=pepper, msg=secret)`` as 64 lowercase hex characters.

    Args:
        secret: The secret part of a key.
        pepper: The server-side secret (``Settings.key_pepper``).

    Raises:
        ValueError: If the pepper is empty.
    """
    if not pepper:
        raise ValueError("the key pepper must not be empty")
    return hmac.new(pepper.encode("utf-8"), secret.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_secret(secret: str, stored_hash: str, pepper: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time.

    Uses ``hmac.compare_digest`` so the comparison time does not depend on how many leading
    characters match.
    """
    return hmac.compare_digest(hash_secret(secret, pepper), stored_hash)

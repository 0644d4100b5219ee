"""API-key format, hashing and constant-time verification (rag_platform.lib.store.keys)."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from rag_platform.lib.store import keys


class TestApiKeys:
    def test_generated_key_has_documented_format(self) -> None:
        key_id, plaintext = keys.generate_api_key()
        assert re.fullmatch(r"[0-9a-f]{12}", key_id)
        assert plaintext.startswith(f"rag_{key_id}_")
        secret = plaintext[len(f"rag_{key_id}_") :]
        # token_urlsafe(32): 32 random bytes -> 43 base64url characters (256 bits >= 128).
        assert len(secret) == 43
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)
        assert keys.parse_api_key(plaintext) == (key_id, secret)

    def test_generated_keys_are_unique(self) -> None:
        generated = [keys.generate_api_key() for _ in range(500)]
        assert len({k for k, _ in generated}) == 500
        assert len({p for _, p in generated}) == 500

    def test_secret_may_contain_underscores(self) -> None:
        plaintext = "rag_0123456789ab_" + "a_b-" * 10 + "xyz"
        assert keys.parse_api_key(plaintext) == ("0123456789ab", "a_b-" * 10 + "xyz")

    @pytest.mark.parametrize(
        "plaintext",
        [
            "",
            "rag_",
            "Bearer rag_0123456789ab_" + "x" * 43,
            "key_0123456789ab_" + "x" * 43,
            "rag_0123456789AB_" + "x" * 43,  # key id must be lowercase hex
            "rag_0123456789a_" + "x" * 43,  # 11-character key id
            "rag_0123456789ab_" + "x" * 10,  # secret too short
            "rag_0123456789ab_" + "x" * 42 + "!",  # not base64url
            "rag_0123456789ab_" + "x" * 500,  # absurdly long
        ],
    )
    def test_malformed_keys_parse_to_none(self, plaintext: str) -> None:
        assert keys.parse_api_key(plaintext) is None

    def test_parse_rejects_non_strings(self) -> None:
        assert keys.parse_api_key(None) is None  # type: ignore[arg-type]
        assert keys.parse_api_key(b"rag_0123456789ab_xxxxxxxxxxxxxxxxxxxxxxxxxx") is None  # type: ignore[arg-type]

    def test_hash_is_hmac_sha256_of_secret_with_pepper(self) -> None:
        expected = hmac.new(b"pepper", b"s3cret", hashlib.sha256).hexdigest()
        assert keys.hash_secret("s3cret", "pepper") == expected
        assert keys.hash_secret("s3cret", "other-pepper") != expected
        assert re.fullmatch(r"[0-9a-f]{64}", expected)

    def test_empty_pepper_is_refused(self) -> None:
        with pytest.raises(ValueError, match="pepper"):
            keys.hash_secret("s3cret", "")

    def test_verify_accepts_right_and_rejects_wrong_secret(self) -> None:
        stored = keys.hash_secret("right", "pepper")
        assert keys.verify_secret("right", stored, "pepper")
        assert not keys.verify_secret("wrong", stored, "pepper")
        assert not keys.verify_secret("right", stored, "other-pepper")

    def test_verify_uses_hmac_compare_digest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[tuple[str, str]] = []
        real = hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(keys.hmac, "compare_digest", spy)
        stored = keys.hash_secret("right", "pepper")
        assert not keys.verify_secret("wrong", stored, "pepper")
        assert calls == [(keys.hash_secret("wrong", "pepper"), stored)]

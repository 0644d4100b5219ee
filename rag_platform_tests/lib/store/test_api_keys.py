"""API keys in the store (rag_platform.lib.store.api_keys), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from rag_platform.lib.store import MetadataStore, hash_secret, keys
from rag_platform_tests.lib.store.factories import PEPPER


def _secret(plaintext: str) -> str:
    parsed = keys.parse_api_key(plaintext)
    assert parsed is not None
    return parsed[1]


def _tamper(plaintext: str) -> str:
    return plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")


class TestApiKeyStore:
    def test_create_then_authenticate(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key(
            "acme", ["finance", "all"], role="admin", name="app", actor="alice"
        )
        assert plaintext.startswith(f"rag_{info.key_id}_")
        assert (info.tenant, info.groups, info.role, info.name) == (
            "acme",
            ["finance", "all"],
            "admin",
            "app",
        )
        assert info.created_at.tzinfo is not None and info.created_at.utcoffset() == timedelta(0)
        principal = store.authenticate(plaintext)
        assert principal is not None
        assert principal.key_id == info.key_id
        assert principal.tenant == "acme"
        assert principal.groups == ("finance", "all")
        assert principal.role == "admin" and principal.is_admin
        assert principal.name == "app"
        assert store.list_tenants() == ["acme"]  # tenant row created with the key

    def test_only_the_peppered_hash_is_stored(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        with store.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM api_keys")).one()
        assert _secret(plaintext) not in str(tuple(row))
        assert row.secret_hash == hash_secret(_secret(plaintext), PEPPER)
        listed = store.list_api_keys("acme")
        assert [k.key_id for k in listed] == [info.key_id]
        assert not hasattr(listed[0], "secret_hash")

    def test_wrong_secret_unknown_and_malformed_keys_fail(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        assert store.authenticate(_tamper(plaintext)) is None
        unknown_id = "f" * 12 if info.key_id != "f" * 12 else "e" * 12
        assert store.authenticate(plaintext.replace(info.key_id, unknown_id)) is None
        for bad in ["", "garbage", f"rag_{info.key_id}_", plaintext + " x", plaintext.upper()]:
            assert store.authenticate(bad) is None
        assert store.authenticate(plaintext) is not None

    def test_other_pepper_does_not_authenticate(self, store: MetadataStore) -> None:
        _, plaintext = store.create_api_key("acme", ["all"])
        other = MetadataStore(store.url, pepper="another-pepper")
        try:
            assert other.authenticate(plaintext) is None
        finally:
            other.dispose()

    def test_authenticate_uses_constant_time_compare(
        self, store: MetadataStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, plaintext = store.create_api_key("acme", ["all"])
        calls: list[tuple[str, str]] = []
        real = keys.hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(keys.hmac, "compare_digest", spy)
        assert store.authenticate(_tamper(plaintext)) is None
        assert store.authenticate(plaintext) is not None
        stored = hash_secret(_secret(plaintext), PEPPER)
        assert calls == [
            (hash_secret(_secret(_tamper(plaintext)), PEPPER), stored),
            (stored, stored),
        ]
        # An unknown key id goes through a comparison too (no timing shortcut).
        assert store.authenticate("rag_000000000000_" + "x" * 43) is None
        assert len(calls) == 3

    def test_revoked_key_fails_immediately(self, store: MetadataStore) -> None:
        info, plaintext = store.create_api_key("acme", ["all"])
        assert store.authenticate(plaintext) is not None
        assert store.revoke_api_key(info.key_id, actor="bob") is True
        assert store.authenticate(plaintext) is None
        assert store.revoke_api_key(info.key_id) is False  # already revoked
        assert store.revoke_api_key("000000000000") is False  # unknown
        (listed,) = store.list_api_keys()
        assert listed.revoked_at is not None and not listed.is_active()

    def test_expired_key_fails(self, store: MetadataStore) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=1.5)
        info, plaintext = store.create_api_key("acme", ["all"], expires_at=expires)
        assert store.authenticate(plaintext) is not None
        assert store.list_api_keys("acme")[0].expires_at == info.expires_at
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        assert store.authenticate(plaintext) is None

    def test_naive_expiry_is_taken_as_utc(self, store: MetadataStore) -> None:
        naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        info, plaintext = store.create_api_key("acme", ["all"], expires_at=naive)
        assert info.expires_at == naive.replace(tzinfo=UTC)
        assert store.list_api_keys()[0].expires_at == naive.replace(tzinfo=UTC)
        assert store.authenticate(plaintext) is not None

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"role": "owner"}, "invalid role"),
            ({"groups": "all"}, "groups"),
            ({"groups": ["ok", ""]}, "empty ACL group name"),
            # a group holding the separator the cache key and --groups split on
            ({"groups": ["a,b"]}, "invalid ACL group name"),
            ({"groups": ["hr team"]}, "invalid ACL group name"),
            ({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "not in the future"),
        ],
    )
    def test_bad_key_arguments_are_refused(
        self, store: MetadataStore, kwargs: dict, message: str
    ) -> None:
        args = {"tenant": "acme", "groups": ["all"], **kwargs}
        with pytest.raises(ValueError, match=message):
            store.create_api_key(**args)
        assert store.list_api_keys() == []

    def test_list_filters_by_tenant(self, store: MetadataStore) -> None:
        a, _ = store.create_api_key("acme", ["all"])
        b, _ = store.create_api_key("beta", ["all"])
        assert [k.key_id for k in store.list_api_keys("acme")] == [a.key_id]
        assert {k.key_id for k in store.list_api_keys()} == {a.key_id, b.key_id}

    def test_key_create_and_revoke_are_audited(self, store: MetadataStore) -> None:
        info, _ = store.create_api_key("acme", ["all"], role="reader", actor="alice")
        store.revoke_api_key(info.key_id, actor="bob")
        entries = store.list_audit("acme")
        assert [(e.action, e.actor) for e in entries] == [
            ("key.create", "alice"),
            ("key.revoke", "bob"),
        ]
        assert entries[0].details["key_id"] == info.key_id
        assert entries[0].details["role"] == "reader"
        assert entries[1].details == {"key_id": info.key_id}

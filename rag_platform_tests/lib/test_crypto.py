"""Envelope encryption (lib/crypto.py): sealed blobs bound to tenant and purpose, data keys
wrapped by the master key in a real metadata store (SQLite and PostgreSQL), master-key rotation
that changes only the wrapped keys, and crypto-shredding."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rag_platform.lib.cache import StageCache
from rag_platform.lib.crypto import (
    MAGIC,
    KeyDestroyedError,
    LocalMasterKey,
    SealedDataError,
    master_keys_from_settings,
    read_or_create_key_file,
    rotate_master_key,
)
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.store.conversations import ConversationMessage
from rag_platform.lib.store.golden_candidates import GoldenCandidate
from rag_platform.lib.store.schema import (
    conversation_messages_table,
    conversations_table,
    data_keys_table,
    feedback_table,
    golden_candidates_table,
    query_log_table,
)
from rag_platform.settings import Settings
from rag_platform_tests.utils.services import fresh_postgres_database

QUESTION = "How many days of paid leave does Jane Roe get?"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """A migrated store with a fresh local master key, on SQLite and on PostgreSQL."""
    master = LocalMasterKey(os.urandom(32))
    if request.param == "sqlite":
        s = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", master_keys=[master])
        s.migrate()
        yield s
        s.dispose()
        return
    with fresh_postgres_database() as url:
        s = MetadataStore(url, master_keys=[master])
        s.migrate()
        yield s
        s.dispose()


def test_sealed_blob_opens_only_as_its_tenant_and_purpose(store: MetadataStore) -> None:
    a, b = store.keyring.cipher("acme"), store.keyring.cipher("globex")
    blob = a.seal(b"the quokkaberry bonus", "cache")
    assert blob[:4] == MAGIC and b"quokkaberry" not in blob
    assert a.open(blob, "cache") == b"the quokkaberry bonus"
    with pytest.raises(SealedDataError, match="globex"):
        b.open(blob, "cache")  # moved to another tenant
    with pytest.raises(SealedDataError):
        a.open(blob, "asset")  # used for another purpose
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(SealedDataError, match="tampered"):
        a.open(bytes(tampered), "cache")
    with pytest.raises(SealedDataError, match="truncated"):
        a.open(blob[:20], "cache")
    # data written before encryption reads as it is
    assert a.open(b"PAR1 plain", "cache") == b"PAR1 plain"
    assert a.open_text("plain text", "cache") == "plain text"


def test_text_columns_hold_no_plaintext_and_read_back(store: MetadataStore) -> None:
    store.upsert_tenant("acme")
    entry = QueryLogEntry(tenant="acme", key_id="k1", question_masked=QUESTION)
    assert store.log_queries([entry]) == 1
    feedback_id = store.add_feedback(entry.query_id, "acme", "k1", 4, "answer", "Jane liked it")
    with store.engine.connect() as conn:
        raw_q = conn.execute(select(query_log_table.c.question_masked)).scalar_one()
        raw_c = conn.execute(select(feedback_table.c.comment)).scalar_one()
        wrapped = conn.execute(select(data_keys_table.c.wrapped)).scalar_one()
    assert raw_q.startswith("rgs1:") and "Jane" not in raw_q and "leave" not in raw_q
    assert raw_c.startswith("rgs1:") and "Jane" not in raw_c
    assert wrapped and len(base64.b64decode(wrapped)) == 12 + 32 + 16  # nonce, key, tag
    got = store.get_query(entry.query_id)
    assert got is not None and got.question_masked == QUESTION
    assert [q.question_masked for q in store.list_queries("acme")] == [QUESTION]
    [fb] = store.list_feedback("acme")
    assert fb.feedback_id == feedback_id and fb.comment == "Jane liked it"
    # the generic API other tables use
    sealed = store.seal_text("acme", "a conversation turn", "conversation")
    assert sealed != "a conversation turn"
    assert store.open_text("acme", sealed, "conversation") == "a conversation turn"
    with pytest.raises(SealedDataError):
        store.open_text("globex", sealed, "conversation")


def test_conversation_and_candidate_text_is_sealed(store: MetadataStore) -> None:
    """Conversation titles and turns and golden-set candidates (question, retrieved text,
    comments) are stored sealed with the tenant's key, and read back as written."""
    store.upsert_tenant("acme")
    conv = store.conversations.create("acme", "k1", "Jane's leave")
    turns = [
        ConversationMessage(0, "user", QUESTION, standalone=QUESTION, rewrite="none"),
        ConversationMessage(0, "assistant", "Jane gets 25 days [1].", query_id="q1"),
    ]
    store.conversations.append("acme", "k1", conv.conversation_id, turns)
    entry = QueryLogEntry(tenant="acme", key_id="k1", question_masked=QUESTION)
    store.log_queries([entry])
    retrieved = [{"chunk_id": "c1", "doc_id": "d1", "text": "Jane Roe: 25 days of leave"}]
    candidate = GoldenCandidate(
        tenant="acme",
        query_id=entry.query_id,
        key_id="k1",
        question=QUESTION,
        retrieved=retrieved,
        rating=1,
        comment="Jane is wrong",
    )
    assert store.golden_candidates.add([candidate]) == 1
    with store.engine.connect() as conn:
        raw = [
            *conn.execute(select(conversations_table.c.title_masked)).scalars(),
            *conn.execute(select(conversation_messages_table.c.content_masked)).scalars(),
            *conn.execute(select(conversation_messages_table.c.standalone_masked)).scalars(),
            *conn.execute(
                select(golden_candidates_table.c.question_masked, golden_candidates_table.c.comment)
            ).one(),
            conn.execute(select(golden_candidates_table.c.retrieved)).scalar_one()[0]["text"],
        ]
    assert [r for r in raw if r and (not r.startswith("rgs1:") or "Jane" in r)] == []
    got = store.conversations.get("acme", "k1", conv.conversation_id)
    assert got.title == "Jane's leave"
    assert [m.content for m in got.messages] == [QUESTION, "Jane gets 25 days [1]."]
    [back] = store.golden_candidates.find("acme")
    assert (back.question, back.comment, back.retrieved) == (QUESTION, "Jane is wrong", retrieved)


def test_rows_written_before_encryption_stay_readable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    plain = MetadataStore(url)  # no master key: plaintext, as before this feature
    plain.migrate()
    plain.upsert_tenant("acme")
    old = QueryLogEntry(tenant="acme", question_masked="an old question")
    plain.log_queries([old])
    sealed = MetadataStore(url, master_keys=[LocalMasterKey(os.urandom(32))])
    new = QueryLogEntry(tenant="acme", question_masked="a new question")
    sealed.log_queries([new])
    assert [q.question_masked for q in sealed.list_queries("acme")] == [
        "an old question",
        "a new question",
    ]
    with pytest.raises(SealedDataError, match="no keyring|not configured"):
        plain.list_queries("acme")  # a store without the master key never returns ciphertext


def test_rotate_master_rewraps_keys_only(store: MetadataStore) -> None:
    store.upsert_tenant("acme")
    entry = QueryLogEntry(tenant="acme", question_masked=QUESTION)
    store.log_queries([entry])
    blob = store.keyring.cipher("globex").seal(b"cached text", "cache")
    with store.engine.connect() as conn:
        before_rows = conn.execute(select(query_log_table)).mappings().all()
        before_keys = conn.execute(select(data_keys_table)).mappings().all()
    old_id = store.keyring.masters[0].key_id
    new = LocalMasterKey(os.urandom(32))
    summary = store.keyring.rotate_master(new)
    assert summary["rewrapped"] == 2 and summary["tenants"] == ["acme", "globex"]
    assert summary["from"] == [old_id] and summary["to"] == new.key_id
    with store.engine.connect() as conn:
        after_rows = conn.execute(select(query_log_table)).mappings().all()
        after_keys = conn.execute(select(data_keys_table)).mappings().all()
    assert after_rows == before_rows  # the sealed data did not change
    assert [k["wrapped"] for k in after_keys] != [k["wrapped"] for k in before_keys]
    assert {k["master_key_id"] for k in after_keys} == {new.key_id}
    # a fresh process holding only the new master key reads everything
    fresh = MetadataStore(store.url, master_keys=[new])
    assert fresh.get_query(entry.query_id).question_masked == QUESTION  # type: ignore[union-attr]
    assert fresh.keyring.cipher("globex").open(blob, "cache") == b"cached text"
    # one holding only the old one reads nothing
    stale = MetadataStore(store.url, master_keys=[LocalMasterKey(os.urandom(32))])
    with pytest.raises(SealedDataError, match="not configured"):
        stale.get_query(entry.query_id)
    fresh.dispose()
    stale.dispose()


def test_destroyed_data_key_fails_closed(store: MetadataStore) -> None:
    store.upsert_tenant("acme")
    cipher = store.keyring.cipher("acme")
    blob = cipher.seal(b"the quokkaberry bonus", "cache")
    store.log_queries([QueryLogEntry(tenant="acme", question_masked=QUESTION)])
    assert store.keyring.destroy("acme") == 1
    with pytest.raises(KeyDestroyedError, match="destroyed"):
        cipher.open(blob, "cache")
    with pytest.raises(KeyDestroyedError):
        store.list_queries("acme")
    # another process (no cached key) fails the same way
    other = MetadataStore(store.url, master_keys=store.keyring.masters)
    with pytest.raises(KeyDestroyedError):
        other.keyring.cipher("acme").open(blob, "cache")
    # new data gets a new key version; the old one is never reused
    again = cipher.seal(b"new text", "cache")
    assert int.from_bytes(again[4:8], "big") == 2
    assert cipher.open(again, "cache") == b"new text"
    other.dispose()


def test_stage_cache_values_are_sealed(store: MetadataStore, tmp_path: Path) -> None:
    path = tmp_path / "parsed.parquet"
    cache = StageCache(path, store.keyring.cipher("acme"))
    cache.put("hash1:cfg", {"text": "the quokkaberry bonus"})
    cache.save()
    assert b"quokkaberry" not in path.read_bytes()
    again = StageCache(path, store.keyring.cipher("acme"))
    assert again.get("hash1:cfg") == {"text": "the quokkaberry bonus"}
    with pytest.raises(SealedDataError):
        StageCache(path, store.keyring.cipher("globex")).get("hash1:cfg")


def test_key_file_is_generated_once_with_mode_0600(rag_home: Settings) -> None:
    path = rag_home.resolved_master_key_file
    off = rag_home.model_copy(update={"encryption_at_rest": False})
    assert master_keys_from_settings(off) == [] and not path.exists()  # off: nothing generated
    [first] = master_keys_from_settings(rag_home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [second] = master_keys_from_settings(rag_home)
    assert first.key_id == second.key_id == read_or_create_key_file(path).key_id
    # turned off later: nothing new is sealed, what was sealed still opens
    sealed = MetadataStore.from_settings(rag_home)
    sealed.migrate()
    blob = sealed.keyring.cipher("acme").seal(b"text", "cache")
    plain = MetadataStore.from_settings(off)
    assert plain.keyring.cipher("acme").seal(b"new", "cache") == b"new"
    assert plain.keyring.cipher("acme").open(blob, "cache") == b"text"
    sealed.dispose()
    plain.dispose()


def test_rotation_in_key_file_mode_replaces_the_file(rag_home: Settings) -> None:
    store = MetadataStore.from_settings(rag_home)
    store.migrate()
    store.upsert_tenant("acme")
    entry = QueryLogEntry(tenant="acme", question_masked=QUESTION)
    store.log_queries([entry])
    old_text = rag_home.resolved_master_key_file.read_text()
    summary = rotate_master_key(rag_home, store.keyring)
    assert summary["rewrapped"] == 1
    assert rag_home.resolved_master_key_file.read_text() != old_text
    assert not rag_home.resolved_master_key_file.with_name("master.key.next").exists()
    fresh = MetadataStore.from_settings(rag_home)  # reads the new key file
    assert fresh.get_query(entry.query_id).question_masked == QUESTION  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="RAG_MASTER_KEY"):
        env = rag_home.model_copy(update={"master_key": "x"})
        rotate_master_key(env, fresh.keyring)
    store.dispose()
    fresh.dispose()


def test_kms_master_key_wraps_through_a_kms_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS KMS through moto's server on loopback: rotate a local master key to KMS, then read
    with KMS alone."""
    import boto3
    from moto.server import ThreadedMotoServer

    from rag_platform.lib.crypto import AwsKmsMasterKey
    from rag_platform.lib.net import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        key_id = boto3.client("kms", endpoint_url=endpoint).create_key()["KeyMetadata"]["KeyId"]
        url = f"sqlite:///{tmp_path / 'meta.db'}"
        local = MetadataStore(url, master_keys=[LocalMasterKey(os.urandom(32))])
        local.migrate()
        local.upsert_tenant("acme")
        entry = QueryLogEntry(tenant="acme", question_masked=QUESTION)
        local.log_queries([entry])
        kms = AwsKmsMasterKey(key_id, endpoint)
        assert local.keyring.rotate_master(kms)["to"] == f"kms:{key_id}"
        with local.engine.connect() as conn:
            wrapped = conn.execute(select(data_keys_table.c.wrapped)).scalar_one()
        assert len(base64.b64decode(wrapped)) > 32  # a KMS ciphertext blob
        only_kms = MetadataStore(url, master_keys=[AwsKmsMasterKey(key_id, endpoint)])
        got = only_kms.get_query(entry.query_id)
        assert got is not None and got.question_masked == QUESTION
        local.dispose()
        only_kms.dispose()
    finally:
        server.stop()

"""Conversations and golden-set candidates in the metadata store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from rag_platform.lib.store import MetadataStore, NotFoundError
from rag_platform.lib.store.conversations import ConversationMessage
from rag_platform.lib.store.golden_candidates import GoldenCandidate
from rag_platform.lib.store.schema import conversations_table, utcnow
from rag_platform_tests.lib.store.factories import log_query

ME, YOU = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


def _turns(question: str, answer: str) -> list[ConversationMessage]:
    return [
        ConversationMessage(0, "user", question, standalone=question, rewrite="none"),
        ConversationMessage(0, "assistant", answer, query_id="q1", citations=["c1", "c2"]),
    ]


class TestConversations:
    def test_messages_are_ordered_and_only_the_owner_reads_them(self, store: MetadataStore) -> None:
        convs = store.conversations
        conv = convs.create("acme", ME, "vitamins")
        convs.append("acme", ME, conv.conversation_id, _turns("first?", "one [1]"))
        convs.append("acme", ME, conv.conversation_id, _turns("and then?", "two [1]"))
        got = convs.get("acme", ME, conv.conversation_id)
        assert [(m.ordinal, m.role, m.content) for m in got.messages] == [
            (0, "user", "first?"),
            (1, "assistant", "one [1]"),
            (2, "user", "and then?"),
            (3, "assistant", "two [1]"),
        ]
        assert got.messages[1].citations == ["c1", "c2"] and got.title == "vitamins"
        assert got.updated_at >= got.created_at
        # another principal of the tenant, the same key id in another tenant, an unknown id:
        # the same NotFoundError, for reads and for writes
        for tenant, key, cid in [
            ("acme", YOU, conv.conversation_id),
            ("globex", ME, conv.conversation_id),
            ("acme", ME, "00000000-0000-0000-0000-000000000000"),
            ("acme", ME, "x" * 500),
        ]:
            with pytest.raises(NotFoundError):
                convs.get(tenant, key, cid)
        with pytest.raises(NotFoundError):
            convs.append("acme", YOU, conv.conversation_id, _turns("mine?", "no"))
        assert len(convs.get("acme", ME, conv.conversation_id).messages) == 4

    def test_delete_by_conversation_principal_or_age(self, store: MetadataStore) -> None:
        convs = store.conversations
        a = convs.create("acme", ME)
        b = convs.create("acme", ME)
        c = convs.create("acme", YOU)
        for conv in (a, b, c):
            convs.append("acme", conv.key_id, conv.conversation_id, _turns("q", "a"))
        with pytest.raises(ValueError, match="refusing"):
            convs.delete("acme")
        assert convs.delete("acme", key_id=YOU, conversation_id=a.conversation_id) == (0, 0)
        assert convs.delete("acme", key_id=ME, conversation_id=a.conversation_id) == (1, 2)
        with store.engine.begin() as conn:
            conn.execute(
                update(conversations_table)
                .where(conversations_table.c.conversation_id == b.conversation_id)
                .values(updated_at=utcnow() - timedelta(days=400))
            )
        assert convs.delete("acme", before=utcnow() - timedelta(days=365)) == (1, 2)
        assert [x.conversation_id for x in convs.find("acme")] == [c.conversation_id]
        assert convs.count("acme", ME) == 0 and convs.count("acme") == 1

    def test_bad_input_is_refused(self, store: MetadataStore) -> None:
        with pytest.raises(ValueError):
            store.conversations.create("Not A Tenant", ME)
        conv = store.conversations.create("acme", ME)
        with pytest.raises(ValueError, match="role"):
            store.conversations.append(
                "acme", ME, conv.conversation_id, [ConversationMessage(0, "system", "x")]
            )


class TestGoldenCandidates:
    def test_one_candidate_per_query_and_review(self, store: MetadataStore) -> None:
        q1, q2 = log_query(store), log_query(store)
        repo = store.golden_candidates
        retrieved = [{"chunk_id": "c1", "doc_id": "d1", "title": "T", "text": "chunk text"}]
        first = GoldenCandidate(
            tenant="acme", query_id=q1, key_id=ME, question="q?", retrieved=retrieved, rating=1
        )
        assert repo.add([first, GoldenCandidate(tenant="acme", query_id=q2, rating=2)]) == 2
        assert repo.add([GoldenCandidate(tenant="acme", query_id=q1, rating=1)]) == 0
        assert repo.known_query_ids("acme") == {q1, q2}
        assert repo.find("acme", "pending")[0].retrieved == retrieved
        with pytest.raises(ValueError, match="needs relevant"):
            repo.review("acme", first.candidate_id, "accepted", "ml")
        with pytest.raises(NotFoundError):
            repo.review("globex", first.candidate_id, "rejected", "ml")
        done = repo.review(
            "acme", first.candidate_id, "accepted", "ml", relevant_doc_ids=["d1", " "]
        )
        assert (done.status, done.relevant_doc_ids, done.reviewer) == ("accepted", ["d1"], "ml")
        assert done.reviewed_at is not None
        assert [c.query_id for c in repo.find("acme", "accepted")] == [q1]
        assert [c.query_id for c in repo.find("acme", "pending")] == [q2]
        assert repo.delete("acme", key_id=ME) == 1
        assert [c.query_id for c in repo.find("acme")] == [q2]

    def test_an_erased_document_is_scrubbed_from_candidates(self, store: MetadataStore) -> None:
        q1, q2 = log_query(store), log_query(store)
        repo = store.golden_candidates
        chunk = {"chunk_id": "c1", "doc_id": "gone", "title": "T", "text": "secret text"}
        other = {"chunk_id": "c2", "doc_id": "kept", "title": "U", "text": "fine"}
        first = GoldenCandidate(tenant="acme", query_id=q1, retrieved=[chunk, other], rating=1)
        repo.add([first, GoldenCandidate(tenant="acme", query_id=q2, retrieved=[other], rating=1)])
        repo.review("acme", first.candidate_id, "accepted", "ml", relevant_doc_ids=["gone", "kept"])
        assert repo.mentions("acme", "gone") == 1
        assert repo.scrub_document("acme", "gone") == 1
        assert repo.mentions("acme", "gone") == 0
        got = repo.get("acme", first.candidate_id)
        assert (got.retrieved, got.relevant_doc_ids) == ([other], ["kept"])
        assert "secret text" not in str(repo.find("acme"))

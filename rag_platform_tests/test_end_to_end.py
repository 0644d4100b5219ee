"""End to end over real files: a real 10-Q PDF (plus a corrupt and an empty one) → the Dagster
pipeline → a published Qdrant Edge index → the query API → a cited answer. Then a new version is
published while the same app keeps serving, and the app switches to it without restart."""

from __future__ import annotations

import shutil
from urllib.parse import unquote

from fastapi.testclient import TestClient

from rag_platform.lib.store import MetadataStore
from rag_platform.runner import materialize_tenant
from rag_platform_tests.conftest import SEC_DOCS, SMALL_PDFS, files_tenant
from serving.main import create_app


class TestEndToEnd:
    def test_files_to_cited_answer_and_hot_version_switch(
        self, rag_home, write_tenants, pdf_folder
    ) -> None:
        write_tenants(files_tenant("filings", pdf_folder))
        summary = materialize_tenant("filings", rag_home)
        assert summary.success and summary.published, summary.failed_checks
        assert summary.quarantined == 2 and summary.documents == 3

        store = MetadataStore.from_settings(rag_home)
        _, key = store.create_api_key("filings", ["all"])
        auth = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(rag_home)) as client:
            r = client.post(
                "/v1/query",
                headers=auth,
                json={"query": "What were Apple's total net sales?", "top_k": 5},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["index_version"] == summary.index_version
            assert body["citations"], body
            assert "[1]" in body["answer"]
            first = body["citations"][0]
            assert unquote(first["uri"]).endswith(SMALL_PDFS[0]) and first["page"] >= 1
            assert any("net sales" in c["text"].lower() for c in body["citations"])

            assert client.post("/v1/query", json={"query": "x"}).status_code == 401
            r = client.post("/v1/search", headers=auth, json={"query": "   ", "top_k": 5})
            assert r.status_code == 422 and "error" in r.json()

            # A second filing arrives; the pipeline publishes v2 while the app keeps running.
            shutil.copy(SEC_DOCS / SMALL_PDFS[1], pdf_folder / SMALL_PDFS[1])
            second = materialize_tenant("filings", rag_home)
            assert second.published and second.index_version != summary.index_version
            r = client.post(
                "/v1/search",
                headers=auth,
                json={"query": "net sales for the quarter ended June 25, 2022", "top_k": 10},
            )
            assert r.status_code == 200
            assert r.json()["index_version"] == second.index_version
            uris = {unquote(h["uri"]).rsplit("/", 1)[-1] for h in r.json()["hits"]}
            assert SMALL_PDFS[1] in uris
        store.dispose()

"""The ingestion API: roles, validation and limits, tenant isolation, jobs and the sensor that
turns them into queued runs (real app, real store, real Dagster instance; no daemon)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from fastapi.testclient import TestClient

from rag_platform.lib.connectors.upload import UploadStore
from rag_platform.lib.store import MetadataStore
from rag_platform.runs import BATCH_TAG
from rag_platform.settings import Settings
from rag_platform_tests.serving.factories import fast_home, make_settings, new_store
from serving.main import create_app

MAX_UPLOAD = 8 * 1024


@dataclass
class Ingest:
    settings: Settings
    store: MetadataStore
    client: TestClient
    keys: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def uploads(self, tenant: str) -> list[Path]:
        root = self.settings.uploads_dir / tenant
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def ingest() -> Iterator[Ingest]:
    with fast_home() as home:
        tenants = home / "tenants.yaml"
        tenants.write_text(
            yaml.safe_dump(
                {
                    "tenants": [
                        {"id": "acme", "budgets": {"max_file_bytes": 4096}},
                        {"id": "globex", "uploads": {"allowed_mime_types": ["text/plain"]}},
                        {"id": "initech", "uploads": {"enabled": False}},
                    ]
                }
            )
        )
        settings = make_settings(home, tenants_file=tenants, max_upload_bytes=MAX_UPLOAD)
        store = new_store(settings)
        keys = {}
        for name, tenant, role in [
            ("a_reader", "acme", "reader"),
            ("a_writer", "acme", "writer"),
            ("a_admin", "acme", "admin"),
            ("b_writer", "globex", "writer"),
            ("c_writer", "initech", "writer"),
        ]:
            keys[name] = store.create_api_key(tenant, ["all"], role=role, actor="test")[1]
        with TestClient(create_app(settings)) as client:
            yield Ingest(settings, store, client, keys)
        store.dispose()


def _upload(ing: Ingest, key: str, name: str, data: bytes, **form: str) -> dict:
    r = ing.client.post(
        "/v1/documents", headers=ing.auth(key), files={"file": (name, data)}, data=form
    )
    return {"status": r.status_code, **r.json()}


def _code(body: dict) -> str:
    assert set(body["error"]) == {"code", "message", "request_id", "details"}
    return str(body["error"]["code"])


def test_writer_uploads_a_file_with_groups_and_the_job_is_queued(ingest: Ingest) -> None:
    body = _upload(ingest, "a_writer", "plan.md", b"# Plan\n\nShip it.", acl_groups="eng, ops")
    assert body["status"] == 202 and set(body) == {"status", "doc_id", "job_id"}
    folder = UploadStore(ingest.settings.uploads_dir).find("acme", body["doc_id"])
    assert folder is not None
    assert (folder / "plan.md").read_bytes() == b"# Plan\n\nShip it."
    assert (folder / ".acl").read_text().split() == ["eng", "ops"]
    job = ingest.client.get(f"/v1/jobs/{body['job_id']}", headers=ingest.auth("a_writer"))
    assert job.status_code == 200
    assert job.json() | {"counts": {}} == {
        "job_id": body["job_id"],
        "run_id": None,
        "status": "queued",
        "stage": None,
        "index_version": None,
        "error": None,
        "kind": "upload",
        "doc_id": body["doc_id"],
        "counts": {},
    }


def test_json_text_document(ingest: Ingest) -> None:
    r = ingest.client.post(
        "/v1/documents",
        headers=ingest.auth("a_admin"),  # admin may write too
        json={"title": "Leave policy", "text": "Ten days.", "uri": "https://hr.test/leave"},
    )
    assert r.status_code == 202
    folder = UploadStore(ingest.settings.uploads_dir).find("acme", r.json()["doc_id"])
    assert folder is not None and (folder / "Leave policy.txt").read_text() == "Ten days."
    assert not (folder / ".acl").exists()  # the tenant's default groups apply
    bad = ingest.client.post(
        "/v1/documents", headers=ingest.auth("a_writer"), json={"title": "", "text": "x"}
    )
    assert bad.status_code == 422 and _code(bad.json()) == "validation_error"
    extra = ingest.client.post(
        "/v1/documents",
        headers=ingest.auth("a_writer"),
        json={"title": "t", "text": "x", "tenant": "globex"},
    )
    assert extra.status_code == 422  # no field names a tenant
    broken = ingest.client.post(
        "/v1/documents",
        headers={**ingest.auth("a_writer"), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert broken.status_code == 400 and _code(broken.json()) == "malformed_json"


@pytest.mark.parametrize(
    ("key", "name", "data", "form", "status", "code"),
    [
        ("a_writer", "tool.exe", b"MZ...", {}, 415, "unsupported_media_type"),
        ("b_writer", "a.pdf", b"%PDF-1.7", {}, 415, "unsupported_media_type"),  # tenant list
        ("a_writer", "big.txt", b"x" * 5000, {}, 413, "file_too_large"),  # tenant budget
        ("b_writer", "big.txt", b"x" * (MAX_UPLOAD + 1), {}, 413, "request_too_large"),
        ("a_writer", "a.txt", b"   ", {}, 422, "empty_document"),
        ("a_writer", "a.txt", b"x", {"acl_groups": "ok,not ok"}, 422, "invalid_acl_group"),
        ("a_writer", ".acl", b"all", {}, 422, "invalid_filename"),
        ("c_writer", "a.txt", b"x", {}, 403, "uploads_disabled"),
        ("a_reader", "a.txt", b"x", {}, 403, "forbidden"),
    ],
)
def test_rejected_uploads_store_nothing(
    ingest: Ingest, key: str, name: str, data: bytes, form: dict, status: int, code: str
) -> None:
    tenant = {"a": "acme", "b": "globex", "c": "initech"}[key[0]]
    before = ingest.uploads(tenant)
    jobs_before = ingest.store.ingest_jobs.pending_tenants()
    body = _upload(ingest, key, name, data, **form)
    assert body["status"] == status and _code(body) == code
    assert ingest.uploads(tenant) == before
    assert ingest.store.ingest_jobs.pending_tenants() == jobs_before or tenant == "acme"


def test_request_shapes(ingest: Ingest) -> None:
    no_file = ingest.client.post(
        "/v1/documents", headers=ingest.auth("a_writer"), data={"acl_groups": "all"}, files={}
    )
    assert no_file.status_code in (415, 422)
    form_only = ingest.client.post(
        "/v1/documents",
        headers=ingest.auth("a_writer"),
        files={"title": (None, "x")},
    )
    assert form_only.status_code == 422 and _code(form_only.json()) == "validation_error"
    text = ingest.client.post(
        "/v1/documents",
        headers={**ingest.auth("a_writer"), "Content-Type": "text/plain"},
        content=b"hello",
    )
    assert text.status_code == 415 and _code(text.json()) == "unsupported_media_type"
    anonymous = ingest.client.post("/v1/documents", files={"file": ("a.txt", b"x")})
    assert anonymous.status_code == 401 and _code(anonymous.json()) == "missing_api_key"


def test_tenant_isolation_of_documents_and_jobs(ingest: Ingest) -> None:
    mine = _upload(ingest, "a_writer", "mine.txt", b"acme only")
    assert mine["status"] == 202
    other_job = ingest.client.get(f"/v1/jobs/{mine['job_id']}", headers=ingest.auth("b_writer"))
    assert other_job.status_code == 404 and _code(other_job.json()) == "job_not_found"
    unknown = ingest.client.get(
        "/v1/jobs/00000000-0000-4000-8000-000000000000", headers=ingest.auth("b_writer")
    )
    assert (
        unknown.status_code == 404
        and unknown.json()["error"]["message"] == (other_job.json()["error"]["message"])
    )  # another tenant's job looks exactly like an unknown one
    other_delete = ingest.client.delete(
        f"/v1/documents/{mine['doc_id']}", headers=ingest.auth("b_writer")
    )
    assert other_delete.status_code == 404 and _code(other_delete.json()) == "document_not_found"
    assert UploadStore(ingest.settings.uploads_dir).find("acme", mine["doc_id"]) is not None
    reader = ingest.client.get(f"/v1/jobs/{mine['job_id']}", headers=ingest.auth("a_reader"))
    assert reader.status_code == 403


def test_delete_then_delete_again(ingest: Ingest) -> None:
    doc = _upload(ingest, "a_writer", "temp.txt", b"short-lived")
    r = ingest.client.delete(f"/v1/documents/{doc['doc_id']}", headers=ingest.auth("a_writer"))
    assert r.status_code == 202 and set(r.json()) == {"job_id"}
    assert UploadStore(ingest.settings.uploads_dir).find("acme", doc["doc_id"]) is None
    job = ingest.client.get(f"/v1/jobs/{r.json()['job_id']}", headers=ingest.auth("a_writer"))
    assert job.json()["kind"] == "delete" and job.json()["status"] == "queued"
    again = ingest.client.delete(f"/v1/documents/{doc['doc_id']}", headers=ingest.auth("a_writer"))
    assert again.status_code == 404
    junk = ingest.client.delete("/v1/documents/..%2F..%2Fetc", headers=ingest.auth("a_writer"))
    assert junk.status_code == 404


def test_writer_cannot_use_admin_endpoints(ingest: Ingest) -> None:
    for path in ("/v1/admin/keys", "/v1/admin/index-versions", "/v1/admin/webhook-deliveries"):
        r = ingest.client.get(path, headers=ingest.auth("a_writer"))
        assert r.status_code == 403 and _code(r.json()) == "forbidden", path
    ok = ingest.client.get("/v1/admin/webhook-deliveries", headers=ingest.auth("a_admin"))
    assert ok.status_code == 200 and ok.json() == {"deliveries": []}


def test_sensor_batches_pending_jobs_into_one_queued_run_per_tenant(ingest: Ingest) -> None:
    from rag_platform.defs.ingestion.sensors import ingest_job_sensor
    from rag_platform.runner import dagster_instance
    from rag_platform.settings import get_settings

    a1 = _upload(ingest, "a_writer", "one.txt", b"one")
    a2 = _upload(ingest, "a_writer", "two.txt", b"two")
    b1 = _upload(ingest, "b_writer", "three.txt", b"three")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAG_HOME", str(ingest.settings.home))
    mp.setenv("RAG_TENANTS_FILE", str(ingest.settings.tenants_file))
    mp.setenv("RAG_DATABASE_URL", ingest.settings.resolved_database_url)
    mp.setenv("RAG_KEY_PEPPER", "test-pepper")
    get_settings.cache_clear()
    try:
        instance = dagster_instance(ingest.settings)
        result = ingest_job_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SensorResult)
        requests = {r.partition_key: r for r in result.run_requests or []}
        assert set(requests) == {"acme", "globex"}
        acme_jobs = ingest.store.ingest_jobs.in_batch(requests["acme"].tags[BATCH_TAG])
        assert {a1["job_id"], a2["job_id"]} <= {j.job_id for j in acme_jobs}
        globex = ingest.store.ingest_jobs.in_batch(requests["globex"].tags[BATCH_TAG])
        assert [j.job_id for j in globex] == [b1["job_id"]]
        # No run was created (no daemon here): the next tick requests the same batches again,
        # under the same run keys (Dagster creates a run once per key), and claims nothing new.
        again = ingest_job_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(again, dg.SensorResult)
        assert sorted(r.run_key or "" for r in again.run_requests or []) == sorted(
            r.run_key or "" for r in requests.values()
        )
        instance.dispose()
    finally:
        mp.undo()
        get_settings.cache_clear()
    # claimed, no run created yet: still queued
    job = ingest.client.get(f"/v1/jobs/{a1['job_id']}", headers=ingest.auth("a_writer"))
    assert job.json()["status"] == "queued" and job.json()["run_id"] is None

"""Export archives and query lineage over a tenant materialized by a real Dagster run, through
the admin API (a running app) and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag_platform.cli import app
from rag_platform.lib.cache import config_hash
from rag_platform.lib.store import MetadataStore
from rag_platform.lib.tenants import load_registry
from rag_platform.settings import Settings
from rag_platform_tests.lib.lifecycle.conftest import TENANT
from serving.main import create_app

runner = CliRunner()
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_export_and_lineage(home: Settings, handbook: Path, tmp_path: Path) -> None:
    store = MetadataStore.from_settings(home)
    admin_info, admin = store.create_api_key(TENANT, ["all"], role="admin", actor="test")
    reader_info, reader = store.create_api_key(TENANT, ["all"], name="reader", actor="test")
    published = store.get_published_version(TENANT)
    assert published is not None
    with TestClient(create_app(home)) as client:
        r = client.post(
            "/v1/query",
            json={"query": "How many days of paid leave do employees get?", "top_k": 3},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert r.status_code == 200, r.text
        query_id = r.json()["query_id"]
        assert client.app.state.serving.flush_query_log(10)
        r = client.post(
            "/v1/feedback",
            json={"query_id": query_id, "rating": 5, "comment": "spot on"},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert r.status_code in (200, 201), r.text
        as_admin = {"Authorization": f"Bearer {admin}"}

        # lineage: source to answer in one call
        r = client.get(f"/v1/admin/queries/{query_id}/lineage", headers=as_admin)
        assert r.status_code == 200, r.text
        lineage = r.json()
        assert lineage["index_version"] == published.version
        assert lineage["run"]["run_id"] == published.details["run_id"] and lineage["run"]["run_id"]
        assert lineage["run"]["code_version"]["package"].startswith("rag-platform==")
        assert re.fullmatch(r"[0-9a-f]{40}|", lineage["run"]["code_version"]["git_commit"])
        tenant = load_registry(home.tenants_file, home.data_dir).get(TENANT)
        assert lineage["run"]["config_fingerprint"] == config_hash(tenant)
        cited = [c for c in lineage["chunks"] if c["cited"]]
        assert cited and all(c["found"] for c in lineage["chunks"])
        assert any(c["uri"].endswith("leave.md") for c in cited)
        assert all(SHA256.match(c["content_hash"]) and c["source_id"] == "files" for c in cited)
        unknown = "00000000-0000-4000-8000-000000000000"
        r = client.get(f"/v1/admin/queries/{unknown}/lineage", headers=as_admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "query_not_found"
        r = client.get(
            f"/v1/admin/queries/{query_id}/lineage", headers={"Authorization": f"Bearer {reader}"}
        )
        assert r.status_code == 403

        # the tenant's archive
        r = client.get("/v1/admin/export", headers=as_admin)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        records = _lines(r.text)
        assert records[0]["type"] == "export" and records[0]["scope"] == "tenant"
        assert records[-1]["type"] == "summary"
        types = [rec["type"] for rec in records]
        assert records[-1]["counts"] == {t: types.count(t) for t in set(types[1:-1])}
        assert types.count("document") == 3 and types.count("api_key") == 2
        assert {"chunk", "query", "feedback", "index_version", "audit", "tenant"} <= set(types)
        assert "secret_hash" not in r.text and admin not in r.text and reader not in r.text
        chunk_text = " ".join(rec["text"] for rec in records if rec["type"] == "chunk")
        assert "25 days of paid leave" in chunk_text

        # a principal's archive (API): its key, its query, its feedback
        r = client.get(f"/v1/admin/principals/{reader_info.key_id}/export", headers=as_admin)
        assert r.status_code == 200
        mine = _lines(r.text)
        assert {rec["type"] for rec in mine} == {
            "export",
            "api_key",
            "query",
            "feedback",
            "summary",
        }
        assert {rec["key_id"] for rec in mine if rec["type"] == "api_key"} == {reader_info.key_id}
        r = client.get("/v1/admin/principals/nosuchkey000/export", headers=as_admin)
        assert r.status_code == 404

    # the CLI: lineage, and a principal's archive to a file
    result = runner.invoke(app, ["lineage", "--query-id", query_id])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["chunks"] == lineage["chunks"]
    out = tmp_path / "export" / "reader.jsonl"
    result = runner.invoke(
        app,
        [
            "export",
            "principal",
            "--tenant",
            TENANT,
            "--principal",
            reader_info.key_id,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["counts"] == {"api_key": 1, "query": 1, "feedback": 1}
    assert [rec["type"] for rec in _lines(out.read_text())][1:-1] == [
        "api_key",
        "query",
        "feedback",
    ]
    result = runner.invoke(app, ["export", "tenant", "--tenant", TENANT])
    assert result.exit_code == 0 and _lines(result.stdout)[-1]["counts"]["document"] == 3
    result = runner.invoke(
        app, ["export", "principal", "--tenant", TENANT, "--principal", "nosuchkey000"]
    )
    assert result.exit_code == 2
    store.dispose()

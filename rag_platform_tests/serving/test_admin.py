"""Admin endpoints: documents, index versions, rollback, keys, revocation; all tenant-scoped."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World
from rag_platform_tests.serving.factories import bearer, chunk_ids, publish_tenant, scifact_docs
from rag_platform_tests.serving.test_auth import assert_error


class TestAdmin:
    def test_documents_lists_the_tenants_published_documents(
        self, client: TestClient, world: World
    ) -> None:
        r = client.get("/v1/admin/documents", headers=bearer(world.keys["a_admin"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index_version"] == "v1" and body["count"] == 30
        expected = {chunk_ids(TENANT_A, d)[0]: d.title for d in world.docs[TENANT_A]}
        assert {d["doc_id"]: d["title"] for d in body["documents"]} == expected
        assert all(
            d["chunks"] == 1 and d["uri"].startswith("scifact://") for d in body["documents"]
        )

    def test_every_admin_endpoint_refuses_a_reader(self, client: TestClient, world: World) -> None:
        key = bearer(world.keys["a_reader"])
        for method, path in [
            ("GET", "/v1/admin/documents"),
            ("GET", "/v1/admin/index-versions"),
            ("POST", "/v1/admin/index-versions/rollback"),
            ("GET", "/v1/admin/keys"),
            ("POST", f"/v1/admin/keys/{world.key_ids['a_secret']}/revoke"),
        ]:
            r = client.request(method, path, headers=key, json={} if method == "POST" else None)
            assert_error(r, 403, "forbidden")
        # nothing was revoked by the refused call
        r = client.post("/v1/search", json={"query": "x"}, headers=bearer(world.keys["a_secret"]))
        assert r.status_code == 200

    def test_keys_lists_own_tenant_only_without_secrets(
        self, client: TestClient, world: World
    ) -> None:
        r = client.get("/v1/admin/keys", headers=bearer(world.keys["a_admin"]))
        assert r.status_code == 200
        keys = r.json()["keys"]
        assert {k["tenant"] for k in keys} == {TENANT_A}
        assert world.key_ids["a_reader"] in {k["key_id"] for k in keys}
        assert world.key_ids["b_reader"] not in {k["key_id"] for k in keys}
        text = r.text
        # a key is rag_<key id>_<secret>; the secret itself may contain "_"
        secrets = [world.keys[n].split("_", 2)[2] for n in world.keys]
        assert all(len(secret) >= 40 and secret not in text for secret in secrets)

    def test_revoke_other_tenants_key_is_404_and_key_keeps_working(
        self, client: TestClient, world: World
    ) -> None:
        r = client.post(
            f"/v1/admin/keys/{world.key_ids['b_reader']}/revoke",
            headers=bearer(world.keys["a_admin"]),
        )
        assert_error(r, 404, "key_not_found")
        ok = client.post("/v1/search", json={"query": "x"}, headers=bearer(world.keys["b_reader"]))
        assert ok.status_code == 200

    def test_revoke_own_key_is_audited_and_takes_effect(
        self, client: TestClient, world: World
    ) -> None:
        key = world.add_key("victim", TENANT_A, ["all"])
        key_id = world.key_ids["victim"]
        r = client.post(f"/v1/admin/keys/{key_id}/revoke", headers=bearer(world.keys["a_admin"]))
        assert r.status_code == 200, r.text
        assert r.json()["key_id"] == key_id and r.json()["revoked_at"] is not None
        assert_error(
            client.post("/v1/search", json={"query": "x"}, headers=bearer(key)),
            401,
            "invalid_api_key",
        )
        audits = world.store.list_audit(TENANT_A, "key.revoke")
        assert any(
            a.details.get("key_id") == key_id and a.actor == f"key:{world.key_ids['a_admin']}"
            for a in audits
        )

    def test_rollback_serves_previous_version_and_is_audited(
        self, client: TestClient, world: World
    ) -> None:
        admin = bearer(world.keys["b_admin"])
        publish_tenant(world.store, world.settings, TENANT_B, "v2", scifact_docs(60, 10))
        time.sleep(1.1)
        r = client.get("/v1/admin/index-versions", headers=admin)
        assert r.json()["published_version"] == "v2"
        assert [v["version"] for v in r.json()["versions"]] == ["v2", "v1"]
        assert (
            client.post(
                "/v1/search", json={"query": "genes"}, headers=bearer(world.keys["b_reader"])
            ).json()["index_version"]
            == "v2"
        )

        r = client.post("/v1/admin/index-versions/rollback", json={}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json() == {"previous_version": "v2", "published_version": "v1"}
        # the API switches immediately in this process (its version cache is invalidated)
        s = client.post(
            "/v1/search", json={"query": "genes"}, headers=bearer(world.keys["b_reader"])
        ).json()
        assert s["index_version"] == "v1"
        assert {h["chunk_id"] for h in s["hits"]} <= world.chunk_ids_of(TENANT_B)
        audits = world.store.list_audit(TENANT_B, "index.rollback")
        assert audits and audits[-1].actor == f"key:{world.key_ids['b_admin']}"
        # tenant A is unaffected
        assert world.store.get_published_version(TENANT_A).version == "v1"  # type: ignore[union-attr]

    def test_rollback_to_unknown_version_is_404_and_nothing_older_is_409(
        self, client: TestClient, world: World
    ) -> None:
        admin = bearer(world.keys["a_admin"])
        assert_error(
            client.post(
                "/v1/admin/index-versions/rollback", json={"version": "nope"}, headers=admin
            ),
            404,
            "version_not_found",
        )
        assert_error(
            client.post("/v1/admin/index-versions/rollback", json={}, headers=admin),
            409,
            "no_rollback_target",
        )


class TestVersionLifecycle:
    """Issue 9: a build a blocking check rejected can never be put in front of users, and every
    version's reconciliation receipt is readable."""

    def test_rollback_refuses_rejected_and_never_published_versions(
        self, client: TestClient, world: World
    ) -> None:
        admin = bearer(world.keys["a_admin"])
        store, path = world.store, str(world.settings.index_dir / TENANT_A / "v1")
        for name in ("v8-built", "v9-rejected"):
            store.register_version(TENANT_A, name, path, 30, 30, "lifecycle")
            store.mark_version_built(TENANT_A, name)
        store.reject_version(
            TENANT_A,
            "v9-rejected",
            [{"name": "evaluation_gate", "reasons": ["ndcg@10 0.41 < threshold 0.60"]}],
        )
        r = client.post(
            "/v1/admin/index-versions/rollback", json={"version": "v9-rejected"}, headers=admin
        )
        assert_error(r, 409, "version_rejected")
        assert "ndcg@10 0.41 < threshold 0.60" in r.json()["error"]["message"]
        r = client.post(
            "/v1/admin/index-versions/rollback", json={"version": "v8-built"}, headers=admin
        )
        assert_error(r, 409, "never_published")
        assert world.store.get_published_version(TENANT_A).version == "v1"  # type: ignore[union-attr]
        listed = {
            v["version"]: v
            for v in client.get("/v1/admin/index-versions", headers=admin).json()["versions"]
        }
        assert listed["v9-rejected"]["status"] == "rejected"
        assert listed["v9-rejected"]["failed_checks"] == [
            {"name": "evaluation_gate", "reasons": ["ndcg@10 0.41 < threshold 0.60"]}
        ]

    def test_receipt_of_a_version(self, client: TestClient, world: World) -> None:
        from rag_platform.lib.index.receipt import InventoryDocument, reconcile

        admin = bearer(world.keys["a_admin"])
        assert_error(
            client.get("/v1/admin/index-versions/nope/receipt", headers=admin),
            404,
            "version_not_found",
        )
        receipt = reconcile(
            [InventoryDocument("d1", ["all"], 1), InventoryDocument("d2", ["all"], 1)],
            set(),
            [("c1", {"doc_id": "d1", "acl_groups": ["all"]})],
        )
        world.store.register_version(TENANT_A, "v7-receipt", "unused", 1, 1, "lifecycle")
        assert_error(
            client.get("/v1/admin/index-versions/v7-receipt/receipt", headers=admin),
            404,
            "receipt_not_found",
        )
        world.store.set_version_details(TENANT_A, "v7-receipt", {"receipt": receipt.to_dict()})
        r = client.get("/v1/admin/index-versions/v7-receipt/receipt", headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["passed"] is False and body["documents_missing"] == 1
        assert body["samples"]["documents_missing"] == ["d2"]
        # another tenant's admin cannot read it
        assert_error(
            client.get(
                "/v1/admin/index-versions/v7-receipt/receipt",
                headers=bearer(world.keys["b_admin"]),
            ),
            404,
            "version_not_found",
        )

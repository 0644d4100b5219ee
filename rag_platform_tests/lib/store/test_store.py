"""The MetadataStore facade (rag_platform.lib.store.store): settings and repositories."""

from __future__ import annotations

from pathlib import Path

from rag_platform.lib.store import MetadataStore


class TestMetadataStore:
    def test_from_settings_creates_the_sqlite_folder(self, tmp_path: Path) -> None:
        from rag_platform.settings import Settings

        settings = Settings(home=tmp_path / "deep" / "home", key_pepper="p1")
        store = MetadataStore.from_settings(settings)
        try:
            assert (tmp_path / "deep" / "home").is_dir()
            store.migrate()
            _, plaintext = store.create_api_key("acme", ["all"])
            assert store.authenticate(plaintext) is not None
            assert (tmp_path / "deep" / "home" / "metadata.db").is_file()
        finally:
            store.dispose()
        with MetadataStore(settings.resolved_database_url, pepper="p2") as other:
            assert other.authenticate(plaintext) is None  # the pepper comes from settings

    def test_facade_and_repositories_share_one_database(self, store: MetadataStore) -> None:
        store.api_keys.create("acme", ["all"], actor="alice")
        store.versions.register("acme", "v1", "/idx/acme/v1", 3, 10, "cfg")
        store.versions.mark_built("acme", "v1")
        published = store.versions.publish("acme", "v1")
        assert store.get_published_version("acme") == published
        assert store.list_api_keys("acme") == store.api_keys.find("acme")
        assert store.list_tenants() == store.tenants.find() == ["acme"]
        assert [e.action for e in store.audit_log.find("acme")] == [
            "key.create",
            "index.transition",  # registered: building
            "index.transition",  # built
            "index.publish",
        ]
        assert store.url == store.db.url and store.engine is store.db.engine
        assert store.dialect == store.db.dialect in ("sqlite", "postgresql")

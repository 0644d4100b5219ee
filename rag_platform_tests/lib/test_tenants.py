"""Tests of the tenant registry's ACL group names and input budgets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rag_platform.lib.tenants import InputBudgets, TenantConfig, validate_acl_group


class TestValidateAclGroup:
    @pytest.mark.parametrize(
        "name", ["all", "hr", "team.finance", "org:eng", "a@b", "x_y-z", "g" * 64]
    )
    def test_valid_names_are_returned(self, name: str) -> None:
        assert validate_acl_group(name) == name

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("", "empty"),
            ("g" * 65, "longer than 64"),
            ("hr,legal", "invalid"),
            ("hr team", "invalid"),
            (" hr", "invalid"),
            ("hr/x", "invalid"),
        ],
    )
    def test_invalid_names_raise(self, name: str, reason: str) -> None:
        with pytest.raises(ValueError, match=reason):
            validate_acl_group(name)

    def test_registry_rejects_invalid_default_and_rule_groups(self) -> None:
        with pytest.raises(ValidationError, match="invalid ACL group name"):
            TenantConfig(id="t", default_acl_groups=["a,b"])
        with pytest.raises(ValidationError, match="invalid ACL group name"):
            TenantConfig.model_validate(
                {
                    "id": "t",
                    "sources": [
                        {
                            "id": "f",
                            "type": "filesystem",
                            "path": "/tmp",
                            "acl": [{"glob": "**", "groups": ["two words"]}],
                        }
                    ],
                }
            )


class TestInputBudgets:
    def test_defaults_and_overrides(self) -> None:
        default = TenantConfig(id="t").budgets
        assert default == InputBudgets()
        assert default.max_file_bytes == 100 * 1024 * 1024
        assert default.max_pdf_pages == 2000
        assert default.max_docx_uncompressed_bytes == 200 * 1024 * 1024
        assert default.max_document_chars == 5_000_000
        assert (default.parse_seconds, default.mask_seconds) == (120.0, 300.0)
        custom = TenantConfig.model_validate({"id": "t", "budgets": {"max_pdf_pages": 10}})
        assert custom.budgets.max_pdf_pages == 10
        with pytest.raises(ValidationError):
            InputBudgets(max_file_bytes=0)


class TestConnectorSources:
    def _source(self, **source: object) -> object:
        return TenantConfig.model_validate({"id": "t", "sources": [source]}).sources[0]

    def test_sql_and_s3_types(self) -> None:
        from datetime import timedelta

        sql = self._source(id="db", type="sql", url_env="DB_URL", table="kb.docs")
        assert type(sql).__name__ == "SqlSource"
        assert sql.full_sync_every == timedelta(days=1)  # type: ignore[attr-defined]
        s3 = self._source(id="b", type="s3", bucket="my-bucket", prefix="p/")
        assert type(s3).__name__ == "S3Source"

    @pytest.mark.parametrize(
        "source",
        [
            {"url_env": "DB_URL"},  # neither table nor query
            {"url_env": "DB_URL", "table": "a", "query": "SELECT 1"},  # both
            {"url_env": "postgresql://u:secret@db/kb", "table": "a"},  # a URL, not a var name
            {"url_env": "DB_URL", "table": "docs; DROP TABLE x"},
            {"url_env": "DB_URL", "table": "docs", "text_column": "body)--"},
        ],
    )
    def test_sql_rejects(self, source: dict[str, object]) -> None:
        with pytest.raises(ValidationError):
            self._source(id="db", type="sql", **source)

    def test_s3_rejects_an_inline_key_and_a_bad_bucket(self) -> None:
        with pytest.raises(ValidationError):
            self._source(id="b", type="s3", bucket="ok-bucket", access_key_id_env="AKIA/XYZ+")
        with pytest.raises(ValidationError):
            self._source(id="b", type="s3", bucket="Bad_Bucket")

    def test_an_unknown_type_is_a_plugin_source_with_its_keys(self) -> None:
        plugin = self._source(id="n", type="notes", notes=["a"])
        assert type(plugin).__name__ == "PluginSource"
        assert plugin.model_dump() == {"type": "notes", "id": "n", "notes": ["a"]}  # type: ignore[attr-defined]


class TestWebAndGitSources:
    def test_registry_reads_web_and_git_sources(self, tmp_path) -> None:
        from rag_platform.lib.tenants import GitSource, WebSource, load_registry

        path = tmp_path / "tenants.yaml"
        path.write_text(
            "tenants:\n"
            "  - id: t\n"
            "    sources:\n"
            "      - {id: site, type: web, start_urls: ['https://docs.example.com/a/'],\n"
            "         allowed_prefixes: ['https://docs.example.com/a/'], delay_seconds: 0.5}\n"
            "      - {id: repo, type: git, repo: repos/handbook, branch: main,\n"
            "         full_sync_every: PT6H}\n"
            "      - {id: remote, type: git, repo: 'git@git.example.com:eng/kb.git'}\n"
        )
        site, repo, remote = load_registry(path).get("t").sources
        assert isinstance(site, WebSource) and site.delay_seconds == 0.5
        assert isinstance(repo, GitSource) and isinstance(remote, GitSource)
        assert repo.repo == str((tmp_path / "repos/handbook").resolve())  # relative to the file
        assert repo.full_sync_every.total_seconds() == 6 * 3600
        assert remote.repo == "git@git.example.com:eng/kb.git" and remote.is_remote

    @pytest.mark.parametrize(
        "source",
        [
            {"id": "w", "type": "web", "allowed_prefixes": ["https://x/"]},  # no seeds
            {"id": "w", "type": "web", "start_urls": ["file:///etc/"], "allowed_prefixes": ["https://x/"]},
            {"id": "w", "type": "web", "start_urls": ["https://x/"], "allowed_prefixes": []},
            {"id": "w", "type": "web", "start_urls": ["https://x/"], "allowed_prefixes": ["https://x/"],
             "acl_groups": ["two words"]},
            {"id": "g", "type": "git", "repo": "/r", "branch": "--orphan"},
        ],
    )  # fmt: skip
    def test_invalid_web_and_git_sources_are_refused(self, source: dict) -> None:
        with pytest.raises(ValidationError):
            TenantConfig.model_validate({"id": "t", "sources": [source]})

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

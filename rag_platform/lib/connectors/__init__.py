"""Connectors: turn a configured tenant source into documents (the contract: :mod:`.base`).

``build_connector(source, default_acl_groups, budgets)`` picks the built-in connector for a
filesystem, dataset, SQL, S3, web or git source; any other ``type`` is looked up in the
entry-point group :data:`ENTRY_POINT_GROUP` (name = the type, value = a factory
``(source_config_dict, default_acl_groups, budgets) -> Connector``), so a connector can ship as
its own package.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rag_platform.lib.connectors.base import Connector
from rag_platform.lib.connectors.dataset import DatasetConnector
from rag_platform.lib.connectors.filesystem import FilesystemConnector, mime_type_for
from rag_platform.lib.connectors.upload import UploadConnector, UploadSource
from rag_platform.lib.tenants import (
    DatasetSource,
    FilesystemSource,
    GitSource,
    InputBudgets,
    S3Source,
    SqlSource,
    WebSource,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Connector",
    "DatasetConnector",
    "FilesystemConnector",
    "build_connector",
    "mime_type_for",
]

#: Entry-point group third-party connectors register in.
ENTRY_POINT_GROUP = "rag_platform.connectors"


def build_connector(
    source: Any,
    default_acl_groups: list[str],
    budgets: InputBudgets | None = None,
    *,
    state_dir: Path | None = None,
) -> Connector:
    """Returns the connector for a source config.

    Args:
        source: a source of the tenant registry (``SourceConfig``: a built-in model or a
            ``PluginSource`` whose ``type`` names an entry point).
        default_acl_groups: groups given to documents without any ACL information (no rule,
            ``.acl`` file, column or metadata value); an explicitly empty ACL stays empty.
        budgets: the tenant's input budgets (``TenantConfig.budgets``; defaults when None).
            Files and objects over ``max_file_bytes`` are skipped; text rows are bounded by
            ``max_document_chars`` when parsed.
        state_dir: the tenant's state folder; a git source clones a repository URL under
            ``state_dir/git/`` (None: under the settings' cache folder).

    Raises:
        TypeError: no built-in connector and no entry point for the source's type, or a plugin
            factory that returns no :class:`Connector`.
    """
    if isinstance(source, UploadSource):  # before its base class FilesystemSource
        return UploadConnector(source, default_acl_groups, budgets)
    if isinstance(source, FilesystemSource):
        return FilesystemConnector(source, default_acl_groups, budgets)
    if isinstance(source, DatasetSource):
        return DatasetConnector(source, default_acl_groups)
    if isinstance(source, WebSource):  # imported here: trafilatura loads slowly
        from rag_platform.lib.connectors.web import WebConnector

        return WebConnector(source, default_acl_groups, budgets)
    if isinstance(source, GitSource):
        from rag_platform.lib.connectors.git import GitConnector

        return GitConnector(source, default_acl_groups, budgets, state_dir=state_dir)
    if isinstance(source, SqlSource):
        from rag_platform.lib.connectors.sql import SqlConnector

        return SqlConnector(source, default_acl_groups, budgets)
    if isinstance(source, S3Source):
        from rag_platform.lib.connectors.s3 import S3Connector

        return S3Connector(source, default_acl_groups, budgets)
    kind = getattr(source, "type", None)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    if not found:
        raise TypeError(
            f"no connector for source type {kind!r} (built in: filesystem, dataset, sql, s3, "
            f"web, git; no entry point {kind!r} in group {ENTRY_POINT_GROUP!r})"
        )
    factory = found[0].load()
    config = source.model_dump(mode="json") if hasattr(source, "model_dump") else dict(source)
    connector = factory(config, list(default_acl_groups), budgets or InputBudgets())
    if not isinstance(connector, Connector):
        raise TypeError(f"entry point {kind!r} returned {type(connector).__name__}, no Connector")
    return connector

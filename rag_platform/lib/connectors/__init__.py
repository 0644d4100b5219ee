"""Connectors: turn a configured tenant source into ``SourceDocument``s.

``build_connector(source, default_acl_groups, budgets)`` picks the connector for a
:class:`~rag_platform.lib.tenants.FilesystemSource` or
:class:`~rag_platform.lib.tenants.DatasetSource`.
"""

from __future__ import annotations

from rag_platform.lib.connectors.base import Connector
from rag_platform.lib.connectors.dataset import DatasetConnector
from rag_platform.lib.connectors.filesystem import FilesystemConnector, mime_type_for
from rag_platform.lib.connectors.upload import UploadConnector, UploadSource
from rag_platform.lib.tenants import DatasetSource, FilesystemSource, InputBudgets

__all__ = [
    "Connector",
    "DatasetConnector",
    "FilesystemConnector",
    "build_connector",
    "mime_type_for",
]


def build_connector(
    source: FilesystemSource | DatasetSource,
    default_acl_groups: list[str],
    budgets: InputBudgets | None = None,
) -> Connector:
    """Returns the connector for a source config.

    Args:
        source: a filesystem or dataset source from the tenant registry.
        default_acl_groups: groups given to documents without any ACL information (no rule,
            ``.acl`` file or column value); an explicitly empty ACL stays empty.
        budgets: the tenant's input budgets (``TenantConfig.budgets``; defaults when None).
            A filesystem source skips files over ``max_file_bytes``; dataset rows are bounded
            by ``max_document_chars`` when parsed.

    Raises:
        TypeError: the source type has no connector.
    """
    if isinstance(source, UploadSource):  # before its base class FilesystemSource
        return UploadConnector(source, default_acl_groups, budgets)
    if isinstance(source, FilesystemSource):
        return FilesystemConnector(source, default_acl_groups, budgets)
    if isinstance(source, DatasetSource):
        return DatasetConnector(source, default_acl_groups)
    raise TypeError(f"no connector for source type {type(source).__name__}")

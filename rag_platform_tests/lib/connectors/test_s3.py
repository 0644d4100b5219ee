"""The S3 connector against moto's standalone server (a real S3 API over loopback HTTP, started
by the tests): ETag change detection without downloads, deletions, metadata ACLs, size budgets,
and a missing bucket that keeps the previous documents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rag_platform.lib.connectors.base import Deleted, SourceState, Unchanged
from rag_platform.lib.connectors.s3 import S3Connector
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.models import SourceDocument, make_doc_id
from rag_platform.lib.tenants import InputBudgets, S3Source, TenantConfig
from rag_platform_tests.utils.processes import MotoServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def bucket(
    moto: MotoServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A new bucket with three objects under ``docs/`` (one outside the prefix)."""
    s3: Any = moto.client()
    name = f"b-{abs(hash(request.node.nodeid)) % 10**10}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="docs/keep.md", Body=b"# Keep\n\nBackups: 30 days.\n")
    s3.put_object(
        Bucket=name,
        Key="docs/edit.md",
        Body=b"# Travel\n\nTrains under 500 km.\n",
        Metadata={"acl-groups": "hr, finance"},
    )
    s3.put_object(
        Bucket=name, Key="docs/gone.txt", Body=b"Cafeteria at 3 pm.", Metadata={"acl-groups": ""}
    )
    s3.put_object(Bucket=name, Key="other/out.txt", Body=b"not under the prefix")
    monkeypatch.setenv("S3_KEY", "testing")
    monkeypatch.setenv("S3_SECRET", "testing")
    s3.bucket_name = name
    return s3


def _source(moto: MotoServer, bucket: str) -> dict[str, Any]:
    return {
        "id": "s3",
        "type": "s3",
        "bucket": bucket,
        "prefix": "docs/",
        "endpoint_url": moto.url,
        "access_key_id_env": "S3_KEY",
        "secret_access_key_env": "S3_SECRET",
    }


def _tenant(moto: MotoServer, bucket: str) -> TenantConfig:
    return TenantConfig.model_validate({"id": "t", "sources": [_source(moto, bucket)]})


def _id(key: str) -> str:
    return make_doc_id("t", "s3", key)


class TestS3Sync:
    def test_edits_deletions_and_metadata_acl(
        self, moto: MotoServer, bucket: Any, tmp_path: Path
    ) -> None:
        name = bucket.bucket_name
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant(moto, name))
        assert not first.failed_sources
        assert sorted(first.added) == sorted(
            _id(f"docs/{k}") for k in ("keep.md", "edit.md", "gone.txt")
        )
        rows = first.frame.set_index("native_id")
        assert rows.loc["docs/keep.md", "acl_groups"] == ["all"]
        assert rows.loc["docs/edit.md", "acl_groups"] == ["finance", "hr"]
        assert rows.loc["docs/gone.txt", "acl_groups"] == []
        assert rows.loc["docs/edit.md", "mime_type"] == "text/markdown"
        assert rows.loc["docs/edit.md", "content"] == b"# Travel\n\nTrains under 500 km.\n"

        bucket.put_object(Bucket=name, Key="docs/edit.md", Body=b"# Travel\n\nPlanes.\n")
        bucket.delete_object(Bucket=name, Key="docs/gone.txt")
        # LastModified has a resolution of one second: the copy must fall in a later second
        written = bucket.head_object(Bucket=name, Key="docs/keep.md")["LastModified"]
        while datetime.now(UTC).replace(microsecond=0) <= written:
            time.sleep(0.05)
        bucket.copy_object(  # a metadata-only change: same bytes, new ACL
            Bucket=name,
            Key="docs/keep.md",
            CopySource={"Bucket": name, "Key": "docs/keep.md"},
            Metadata={"acl-groups": "ops"},
            MetadataDirective="REPLACE",
        )
        second = sync.run(_tenant(moto, name))
        assert second.changed == [_id("docs/edit.md")]
        assert second.deleted == [_id("docs/gone.txt")]
        assert second.acl_changed == [_id("docs/keep.md")]
        rows = second.frame.set_index("native_id")
        assert rows.loc["docs/edit.md", "content"] == b"# Travel\n\nPlanes.\n"
        assert rows.loc["docs/keep.md", "acl_groups"] == ["ops"]
        assert second.sources["s3"].cursor != first.sources["s3"].cursor

        third = sync.run(_tenant(moto, name))
        assert not (third.added or third.changed or third.deleted or third.acl_changed)
        assert third.sources["s3"].unchanged == 2 and third.sources["s3"].cursor == (
            second.sources["s3"].cursor
        )

    def test_unchanged_objects_are_not_downloaded(self, moto: MotoServer, bucket: Any) -> None:
        source = S3Source.model_validate(_source(moto, bucket.bucket_name))
        connector = S3Connector(source, ["all"])
        docs = [d for d in connector.changes(SourceState(), full=True)]
        versions = {d.native_id: d.version for d in docs if isinstance(d, SourceDocument)}
        assert len(versions) == 3 and all(v for v in versions.values())
        # a connector whose downloads fail: with the versions it never needs one
        blocked = S3Connector(source, ["all"])
        blocked._fetch = lambda *a: (_ for _ in ()).throw(AssertionError("downloaded"))  # type: ignore[method-assign]
        again = list(blocked.changes(SourceState(None, versions), full=True))
        assert again == [Unchanged(k) for k in sorted(versions)]
        stale = {**versions, "docs/was-here.md": '"x"|t'}
        assert Deleted("docs/was-here.md", "object no longer listed under the prefix") in list(
            blocked.changes(SourceState(None, stale), full=False)
        )

    def test_size_budget_and_invalid_acl_are_problems(self, moto: MotoServer, bucket: Any) -> None:
        name = bucket.bucket_name
        bucket.put_object(Bucket=name, Key="docs/big.txt", Body=b"x" * 5000)
        bucket.put_object(
            Bucket=name, Key="docs/bad-acl.txt", Body=b"y", Metadata={"acl-groups": "a b"}
        )
        source = S3Source.model_validate(_source(moto, name))
        connector = S3Connector(source, ["all"], InputBudgets(max_file_bytes=1000))
        keys = [d.native_id for d in connector.list_documents()]
        assert keys == ["docs/edit.md", "docs/gone.txt", "docs/keep.md"]
        problems = dict(connector.problems)
        assert problems["docs/big.txt"].startswith("object over max_file_bytes (5000 > 1000)")
        assert "invalid ACL" in problems["docs/bad-acl.txt"]

    def test_a_missing_bucket_keeps_the_previous_documents(
        self, moto: MotoServer, bucket: Any, tmp_path: Path
    ) -> None:
        name = bucket.bucket_name
        sync = SourceSync(tmp_path / "state")
        first = sync.run(_tenant(moto, name))
        for key in ("docs/keep.md", "docs/edit.md", "docs/gone.txt", "other/out.txt"):
            bucket.delete_object(Bucket=name, Key=key)
        bucket.delete_bucket(Bucket=name)
        failed = sync.run(_tenant(moto, name))
        assert "NoSuchBucket" in failed.failed_sources["s3"]
        assert not failed.deleted
        assert sorted(failed.frame["doc_id"]) == sorted(first.frame["doc_id"])

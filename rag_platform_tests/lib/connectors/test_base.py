"""The connector contract's shared pieces: tenacity retries of transient errors only, the
full-listing helper, and third-party connectors found through the entry-point group."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag_platform.lib.connectors import ENTRY_POINT_GROUP, build_connector
from rag_platform.lib.connectors.base import (
    SourceState,
    Unchanged,
    full_listing_changes,
    is_transient,
    transient_retry,
)
from rag_platform.lib.ingestion.sync import SourceSync
from rag_platform.lib.models import SourceDocument
from rag_platform.lib.tenants import TenantConfig


class TestTransientRetry:
    def test_retries_transient_errors_then_succeeds(self) -> None:
        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionResetError("reset by peer")
            return "ok"

        assert transient_retry(flaky, initial_seconds=0.01) == "ok"
        assert len(calls) == 3

    def test_gives_up_after_the_attempts(self) -> None:
        calls: list[int] = []

        def down() -> None:
            calls.append(1)
            raise TimeoutError("timed out")

        with pytest.raises(TimeoutError):
            transient_retry(down, attempts=3, initial_seconds=0.01)
        assert len(calls) == 3

    def test_a_permanent_error_is_not_retried(self) -> None:
        calls: list[int] = []

        def missing() -> None:
            calls.append(1)
            raise ValueError("no such table")

        with pytest.raises(ValueError):
            transient_retry(missing, initial_seconds=0.01)
        assert len(calls) == 1

    @pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (404, False)])
    def test_http_status(self, status: int, transient: bool) -> None:
        request = httpx.Request("GET", "http://127.0.0.1/")
        error = httpx.HTTPStatusError(
            "x", request=request, response=httpx.Response(status, request=request)
        )
        assert is_transient(error) is transient


def test_full_listing_changes_drops_unchanged_content() -> None:
    docs = [
        SourceDocument("s", "a", "u", "A", "text/plain", text="one", version="1"),
        SourceDocument("s", "b", "u", "B", "text/plain", text="two", version="2"),
    ]
    out = list(full_listing_changes(iter(docs), SourceState(None, {"a": "1", "b": "old"})))
    assert out == [Unchanged("a"), docs[1]]


PLUGIN = textwrap.dedent(
    """
    from rag_platform.lib.connectors.base import SourceState, full_listing_changes
    from rag_platform.lib.models import SourceDocument


    class Notes:
        def __init__(self, config, default_acl_groups, budgets):
            self.source_id = config["id"]
            self.notes = config["notes"]
            self.groups = default_acl_groups
            self.problems = []

        def list_documents(self):
            for i, note in enumerate(self.notes):
                yield SourceDocument(self.source_id, str(i), f"notes:{i}", f"note {i}",
                                     "text/plain", text=note, acl_groups=self.groups,
                                     version=note)

        def changes(self, state, *, full):
            return full_listing_changes(self.list_documents(), state)

        @property
        def next_cursor(self):
            return None


    def factory(config, default_acl_groups, budgets):
        return Notes(config, default_acl_groups, budgets)
    """
)


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[None]:
    """A real installed distribution on ``sys.path`` with an entry point in the group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "notes_connector.py").write_text(PLUGIN)
    info = site / "notes_connector-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: notes-connector\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nnotes = notes_connector:factory\n"
    )
    sys.path.insert(0, str(site))
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("notes_connector", None)


def test_a_third_party_connector_registers_through_the_entry_point_group(
    plugin: None, tmp_path: Path
) -> None:
    tenant = TenantConfig.model_validate(
        {
            "id": "t",
            "default_acl_groups": ["staff"],
            "sources": [{"id": "n", "type": "notes", "notes": ["alpha", "beta"]}],
        }
    )
    connector = build_connector(tenant.sources[0], ["staff"])
    assert type(connector).__name__ == "Notes"
    result = SourceSync(tmp_path / "state").run(tenant)
    assert not result.failed_sources
    assert sorted(result.frame["text"]) == ["alpha", "beta"]
    assert all(list(g) == ["staff"] for g in result.frame["acl_groups"])


def test_an_unknown_type_fails_only_its_source(tmp_path: Path) -> None:
    tenant = TenantConfig.model_validate(
        {"id": "t", "sources": [{"id": "x", "type": "no-such-connector"}]}
    )
    with pytest.raises(TypeError, match="no entry point 'no-such-connector'"):
        build_connector(tenant.sources[0], ["all"])
    result = SourceSync(tmp_path / "state").run(tenant)
    assert "no-such-connector" in result.failed_sources["x"]

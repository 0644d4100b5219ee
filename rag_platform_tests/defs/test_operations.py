"""What data engineers run besides the pipeline: the registry and source-change sensors, the
daily cost rollup, and the pipeline on a dagster-postgres instance with the metadata store on
PostgreSQL (deploy/dagster.yaml)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import dagster as dg
import pytest

from rag_platform.defs.ingestion.sensors import source_change_sensor, tenant_registry_sensor
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import dagster_instance, load_definitions, materialize_tenant
from rag_platform.settings import PROJECT_ROOT, get_settings
from rag_platform_tests.conftest import files_tenant, scifact_tenant
from rag_platform_tests.utils.services import fresh_postgres_database, require_postgres


class TestSensors:
    def test_registry_sensor_keeps_partitions_in_step(self, rag_home, write_tenants) -> None:
        instance = dagster_instance(rag_home)
        write_tenants(scifact_tenant("alpha"), scifact_tenant("beta"))
        result = tenant_registry_sensor(dg.build_sensor_context(instance=instance))
        (add,) = result.dynamic_partitions_requests
        assert sorted(add.partition_keys) == ["alpha", "beta"]
        assert sorted(r.partition_key for r in result.run_requests) == ["alpha", "beta"]
        instance.add_dynamic_partitions("tenants", ["alpha", "beta"])  # as the daemon would

        write_tenants(scifact_tenant("alpha"))
        result = tenant_registry_sensor(dg.build_sensor_context(instance=instance))
        (delete,) = result.dynamic_partitions_requests
        assert isinstance(delete, dg.DeleteDynamicPartitionsRequest)
        assert list(delete.partition_keys) == ["beta"] and not result.run_requests

    def test_source_change_sensor_requests_a_run(self, rag_home, write_tenants, tmp_path) -> None:
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.md").write_text("# A\n\nfirst\n")
        write_tenants(files_tenant("docs", folder))
        instance = dagster_instance(rag_home)
        instance.add_dynamic_partitions("tenants", ["docs"])
        first = source_change_sensor(dg.build_sensor_context(instance=instance))
        assert not first.run_requests  # the first tick only records the fingerprint
        unchanged = source_change_sensor(
            dg.build_sensor_context(instance=instance, cursor=first.cursor)
        )
        assert not unchanged.run_requests
        (folder / "b.md").write_text("# B\n\nsecond\n")
        changed = source_change_sensor(
            dg.build_sensor_context(instance=instance, cursor=first.cursor)
        )
        assert [r.partition_key for r in changed.run_requests] == ["docs"]


class TestDailyCosts:
    def test_rollup_after_ingestion(self, rag_home, write_tenants, tmp_path) -> None:
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.md").write_text("# Pricing\n\nThe plan costs 10 dollars a seat.\n")
        write_tenants(files_tenant("docs", folder))
        assert materialize_tenant("docs", rag_home).published
        instance = dagster_instance(rag_home)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        job = load_definitions().resolve_job_def("tenant_costs")
        result = job.execute_in_process(
            partition_key=dg.MultiPartitionKey({"tenant": "docs", "day": day}), instance=instance
        )
        assert result.success
        rollup = result.output_for_node("tenant_daily_costs")
        assert rollup["usage"]["embedding_tokens"] > 0
        assert rollup["usage"]["storage_bytes"] > 0
        assert rollup["total_usd"] > 0


@pytest.mark.integration
class TestDagsterPostgres:
    def test_pipeline_on_dagster_postgres(
        self, rag_home, write_tenants, tmp_path, monkeypatch
    ) -> None:
        require_postgres()
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.md").write_text("# Leave\n\nEmployees get 25 days of paid leave.\n")
        write_tenants(files_tenant("pg", folder))
        with fresh_postgres_database() as dagster_url, fresh_postgres_database() as meta_url:
            home = tmp_path / "dagster_pg"
            home.mkdir()
            shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
            monkeypatch.setenv("DAGSTER_PG_URL", dagster_url.replace("+psycopg", "+psycopg2"))
            monkeypatch.setenv("RAG_DATABASE_URL", meta_url)
            get_settings.cache_clear()
            settings = get_settings()
            instance = dg.DagsterInstance.from_config(str(home))
            try:
                summary = materialize_tenant("pg", settings, instance=instance)
                assert summary.success and summary.published
                runs = instance.get_runs()
                assert [r.run_id for r in runs] == [summary.run_id]
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                store = MetadataStore(meta_url)
                assert store.dialect == "postgresql"
                assert store.get_published_version("pg").version == summary.index_version
                store.dispose()
            finally:
                instance.dispose()

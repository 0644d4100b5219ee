"""Fairness of the run queue: two tenants sync at once through the ingestion API, one with 50×
the documents of the other, on a dagster-postgres instance (the machine's PostgreSQL, a database
of its own) with the queued run coordinator of ``deploy/dagster.yaml``. The small tenant is
published while the large one is still running: the per-tenant limit (1 run per
``dagster/partition``) and ``max_concurrent_runs`` keep a big tenant from starving a small one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from rag_platform.client import RagClient
from rag_platform.defs.partitions import TENANTS
from rag_platform.lib.store import MetadataStore
from rag_platform.runner import dagster_instance
from rag_platform.settings import PROJECT_ROOT, Settings
from rag_platform_tests.conftest import scifact_tenant
from rag_platform_tests.utils.processes import PlatformServer, platform_env
from rag_platform_tests.utils.services import fresh_postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SMALL, LARGE = 3, 199  # + one upload each: 4 and 200 documents (50×)


def test_small_tenant_publishes_while_the_large_one_still_runs(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        pg_url = url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
        home = tmp_path / "home"
        (home / "dagster").mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", home / "dagster" / "dagster.yaml")
        tenants = tmp_path / "tenants.yaml"
        tenants.write_text(
            yaml.safe_dump(
                {
                    "tenants": [
                        scifact_tenant("small", limit=SMALL),
                        scifact_tenant("large", limit=LARGE),
                    ]
                }
            )
        )
        values = {
            "RAG_HOME": str(home),
            "RAG_TENANTS_FILE": str(tenants),
            "RAG_KEY_PEPPER": "fair-pepper",
            "RAG_MODELS_DIR": str(tmp_path / "models"),
            "DAGSTER_PG_URL": pg_url,
        }
        os.environ["DAGSTER_PG_URL"] = pg_url
        try:
            settings = Settings(home=home, tenants_file=tenants, key_pepper="fair-pepper")
            instance = dagster_instance(settings)
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            instance.add_dynamic_partitions(TENANTS, ["small", "large"])
            store = MetadataStore.from_settings(settings)
            store.migrate()
            keys = {
                t: store.create_api_key(t, ["all"], role="writer", actor="test")[1]
                for t in ("small", "large")
            }
            store.dispose()
            serve = PlatformServer(tmp_path / "logs", env=platform_env(values), startup_timeout=300)
            serve.start()
            try:
                clients = {t: RagClient(serve.url, k, timeout=60) for t, k in keys.items()}
                large_job = clients["large"].add_text("Large", "A large tenant's upload.").job_id
                small_job = clients["small"].add_text("Small", "A small tenant's upload.").job_id
                small = clients["small"].wait(small_job, timeout=900, poll_seconds=0.5)
                large = clients["large"].job(large_job)
                assert small.status == "published"
                assert large.status in ("queued", "running"), large
                large_run = instance.get_run_by_id(large.run_id) if large.run_id else None
                assert large_run is not None and not large_run.is_finished
                # both ran at once: the large run had started before the small one ended
                large_record = instance.get_run_record_by_id(large_run.run_id)
                small_record = instance.get_run_record_by_id(small.run_id or "")
                assert large_record is not None and small_record is not None
                assert large_record.start_time is not None
                assert small_record.end_time is not None
                assert large_record.start_time < small_record.end_time
                final = clients["large"].wait(large_job, timeout=1500)
                assert final.status == "published"
                assert (
                    final.counts["source_documents"]["documents"]
                    == 50 * (small.counts["source_documents"]["documents"])
                )
                for c in clients.values():
                    c.close()
            finally:
                serve.stop(timeout=60)
                instance.dispose()
        finally:
            os.environ.pop("DAGSTER_PG_URL", None)
            os.environ.pop("DAGSTER_HOME", None)

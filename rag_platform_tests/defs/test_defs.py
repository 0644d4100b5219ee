"""The Definitions load, and their asset keys, checks, jobs, sensors and schedules are a visible
snapshot: a rename shows up as a diff here."""

from rag_platform.runner import load_definitions


class TestDefinitions:
    def test_asset_keys_snapshot(self) -> None:
        graph = load_definitions().resolve_asset_graph()
        assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == [
            "chunk_embeddings",
            "chunks",
            "golden_candidates",
            "golden_set",
            "index_evaluation",
            "masked_documents",
            "parsed_documents",
            "published_index",
            "retention_sweep",
            "search_index",
            "source_documents",
            "tenant_backup",
            "tenant_daily_costs",
        ]

    def test_blocking_checks_snapshot(self) -> None:
        graph = load_definitions().resolve_asset_graph()
        assert sorted(c.to_user_string() for c in graph.asset_check_keys) == [
            "chunks:chunk_ids_unique",
            "chunks:chunk_no_residual_pii",
            "chunks:chunk_tenant_matches_partition",
            "chunks:chunk_text_non_empty",
            "chunks:chunk_token_counts_in_bounds",
            "index_evaluation:evaluation_gate",
            "search_index:reconciliation",
            "source_documents:sources_reachable",
        ]
        for key in graph.asset_check_keys:
            # an unreachable source only warns: its previous documents are kept
            blocking = key.to_user_string() != "source_documents:sources_reachable"
            assert graph.get_check_spec(key).blocking == blocking, key

    def test_jobs_sensors_schedules(self) -> None:
        defs = load_definitions()
        assert {j.name for j in defs.resolve_all_job_defs()} >= {
            "tenant_pipeline",
            "tenant_costs",
            "tenant_backups",
            "tenant_retention",
            "tenant_feedback",
        }
        assert {s.name for s in defs.sensors} == {
            "tenant_registry_sensor",
            "source_change_sensor",
            "ingest_job_sensor",
            "webhook_success_sensor",
            "webhook_failure_sensor",
        }
        assert {s.name for s in defs.schedules} == {
            "nightly_resync",
            "daily_costs",
            "nightly_backup",
            "daily_retention",
            "daily_golden_candidates",
        }

    def test_every_pipeline_asset_is_partitioned_by_tenant(self) -> None:
        graph = load_definitions().resolve_asset_graph()
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            assert node.partitions_def is not None, key
            assert node.group_name in {
                "ingestion",
                "indexing",
                "evaluation",
                "costs",
                "operations",
                "lifecycle",
                "feedback",
            }

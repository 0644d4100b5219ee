"""The console script, in-process through Typer's runner, on a temporary RAG_HOME."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rag_platform.cli import app

runner = CliRunner()


def _last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


class TestCli:
    def test_tenant_materialize_keys_rollback(self, rag_home, tmp_path) -> None:
        folder = tmp_path / "handbook"
        folder.mkdir()
        (folder / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave.\n")
        result = runner.invoke(app, ["tenants", "add", "handbook", "--path", str(folder)])
        assert result.exit_code == 0, result.output

        result = runner.invoke(app, ["materialize", "--tenant", "handbook"])
        assert result.exit_code == 0, result.output
        summary = json.loads(_last_line(result.stdout))
        assert set(summary) >= {
            "documents",
            "chunks",
            "embedded",
            "index_version",
            "published",
            "seconds",
        }
        assert summary["documents"] == 1 and summary["published"] is True
        first_version = summary["index_version"]

        (folder / "remote.md").write_text("# Remote work\n\nUp to three days a week.\n")
        result = runner.invoke(app, ["materialize", "--tenant", "handbook"])
        assert json.loads(_last_line(result.stdout))["documents"] == 2

        result = runner.invoke(
            app, ["keys", "create", "--tenant", "handbook", "--groups", "all,hr", "--role", "admin"]
        )
        assert result.exit_code == 0, result.output
        key = _last_line(result.stdout)
        assert key.startswith("rag_") and len(key) > 40

        listed = runner.invoke(app, ["keys", "list", "--tenant", "handbook"]).stdout
        assert key not in listed and "hr" in listed

        golden = tmp_path / "golden.jsonl"
        golden.write_text(
            json.dumps(
                {"question": "How many days of paid leave?", "relevant_doc_ids": ["leave.md"]}
            )
            + "\n"
            + json.dumps(
                {"question": "How many remote days a week?", "relevant_doc_ids": ["remote.md"]}
            )
            + "\n"
        )
        result = runner.invoke(app, ["eval", "--tenant", "handbook", "--golden", str(golden)])
        assert result.exit_code == 0, result.output
        metrics = json.loads(_last_line(result.stdout))
        assert metrics["queries"] == 2 and metrics["golden"] == "golden.jsonl"
        assert metrics["recall@100"] == 1.0 and metrics["ndcg@10"] > 0.6

        result = runner.invoke(app, ["index", "rollback", "--tenant", "handbook"])
        assert result.exit_code == 0, result.output
        assert json.loads(_last_line(result.stdout))["published"] == first_version

    def test_bad_input_is_a_clear_error(self, rag_home, tmp_path) -> None:
        result = runner.invoke(app, ["materialize", "--tenant", "nope"])
        assert result.exit_code == 2 and "unknown tenant" in result.output
        result = runner.invoke(app, ["tenants", "add", "Bad_Id", "--path", str(tmp_path)])
        assert result.exit_code == 2
        result = runner.invoke(app, ["tenants", "add", "x", "--path", str(tmp_path / "missing")])
        assert result.exit_code == 2 and "not a folder" in result.output


class TestIngestionCommands:
    def test_writer_keys_and_the_webhook_log(self, rag_home, write_tenants) -> None:
        from rag_platform.lib.store import MetadataStore

        write_tenants({"id": "handbook"})
        result = runner.invoke(app, ["keys", "create", "--tenant", "handbook", "--role", "writer"])
        assert result.exit_code == 0, result.output
        key = _last_line(result.stdout)
        with MetadataStore.from_settings(rag_home) as store:
            principal = store.authenticate(key)
            assert principal is not None and principal.role == "writer" and principal.can_write
            assert not principal.is_admin
            store.webhook_deliveries.record(
                delivery_id="d1",
                tenant="handbook",
                event="job.completed",
                url="http://127.0.0.1:9/hook",
                run_id="r1",
                status="failed",
                attempts=5,
                status_code=None,
                error="ConnectError",
            )
        bad = runner.invoke(app, ["keys", "create", "--tenant", "handbook", "--role", "owner"])
        assert bad.exit_code == 2 and "reader, writer or admin" in bad.output
        log = runner.invoke(app, ["webhooks", "--tenant", "handbook"])
        assert log.exit_code == 0
        row = json.loads(_last_line(log.stdout))
        assert (row["delivery_id"], row["status"], row["attempts"]) == ("d1", "failed", 5)

    def test_no_daemon_heartbeat_on_a_fresh_instance(self, rag_home) -> None:
        from rag_platform.cli import _daemon_running

        assert _daemon_running(rag_home) is False


def _tree_digest(root) -> dict[str, str]:
    """Every file under ``root`` → SHA-256 of its bytes (folders included, as empty)."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


class TestPlanAndProgress:
    def test_plan_predicts_work_and_changes_nothing(self, rag_home, write_tenants, tmp_path):
        from rag_platform_tests.conftest import files_tenant

        folder = tmp_path / "handbook"
        folder.mkdir()
        (folder / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave.\n")
        (folder / "travel.md").write_text("# Travel\n\nTrains are preferred under 500 km.\n")
        (folder / "remote.md").write_text("# Remote work\n\nUp to three days a week.\n")
        write_tenants(files_tenant("hb", folder))
        home = rag_home.home

        def plan() -> dict:
            before = _tree_digest(home)
            result = runner.invoke(app, ["materialize", "--tenant", "hb", "--plan"])
            assert result.exit_code == 0, result.output
            assert _tree_digest(home) == before  # no state, snapshot, cache or log written
            return json.loads(_last_line(result.stdout))

        fresh = plan()
        assert fresh["to_parse"] == fresh["to_mask"] == fresh["to_chunk"] == 3
        assert fresh["to_embed"] == 3  # one chunk each, estimated from their length
        assert fresh["estimated_seconds"] > 0 and fresh["estimated_cost"] > 0

        result = runner.invoke(app, ["materialize", "--tenant", "hb"])
        assert result.exit_code == 0, result.output
        summary = json.loads(_last_line(result.stdout))
        assert summary["published"] and summary["embedded"] == 3
        # one progress line per stage on stderr; Dagster's events only in the log file
        for line in ("hb parse: 3/3 documents", "hb embed: 3/3 chunks", "hb index: 3/3 chunks"):
            assert line in result.stderr, result.stderr
        assert "DEBUG" not in result.output and "STEP_SUCCESS" not in result.output
        (log_file,) = (home / "logs").glob("materialize-*.log")
        events = log_file.read_text()
        assert "RUN_START" in events and "DEBUG" in events and "embed: 3/3 chunks" in events
        rates = json.loads((home / "stage_rates.json").read_text())["tenants"]["hb"]
        assert {"parse", "mask", "chunk", "embed", "index"} <= set(rates)

        after = plan()
        assert [after[k] for k in ("to_parse", "to_mask", "to_chunk", "to_embed")] == [0, 0, 0, 0]
        assert after["estimated_seconds"] == 0 and after["estimated_cost"] == 0
        assert after["rates"]["embed"] == rates["embed"]  # the last run's measured rate

        (folder / "travel.md").write_text("# Travel\n\nTrains are preferred under 700 km.\n")
        edited = plan()
        assert [edited[k] for k in ("to_parse", "to_mask", "to_chunk", "to_embed")] == [1, 1, 1, 1]
        assert edited["to_index"] == 3  # a new version holds every chunk

        # the Dagster cost preview: the tenant_plan job's op metadata
        from rag_platform.runner import dagster_instance, load_definitions

        job = load_definitions().resolve_job_def("tenant_plan")
        run = job.execute_in_process(partition_key="hb", instance=dagster_instance(rag_home))
        assert run.success
        (output,) = [e for e in run.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {
            k: getattr(v, "value", v) for k, v in output.event_specific_data.metadata.items()
        }
        assert metadata["to_parse"] == metadata["to_embed"] == 1

    def test_verbose_prints_the_event_stream(self, rag_home, write_tenants, tmp_path) -> None:
        from rag_platform_tests.conftest import files_tenant

        folder = tmp_path / "one"
        folder.mkdir()
        (folder / "a.md").write_text("# A\n\nThe first letter.\n")
        write_tenants(files_tenant("one", folder))
        result = runner.invoke(app, ["materialize", "--tenant", "one", "--verbose"])
        assert result.exit_code == 0, result.output
        assert "STEP_SUCCESS" in result.stderr and "one parse: 1/1 documents" in result.stderr
        assert json.loads(_last_line(result.stdout))["published"] is True


@pytest.mark.slow
@pytest.mark.integration
class TestDemo:
    def test_answers_each_tenant_once_published(self, rag_home, write_tenants, tmp_path) -> None:
        """The real ``rag-platform demo`` (its own API server on loopback): the first tenant's
        answer comes before the second tenant is materialized, and the last line is the JSON
        with the time to the first answer."""
        import os
        import subprocess
        import sys

        from rag_platform.settings import PROJECT_ROOT
        from rag_platform_tests.conftest import files_tenant

        tenants = []
        for name, text in (
            ("first", "Backups are kept for 30 days."),
            ("second", "Lunch is at noon."),
        ):
            folder = tmp_path / name
            folder.mkdir()
            (folder / f"{name}.md").write_text(f"# {name.title()}\n\n{text}\n")
            tenants.append(files_tenant(name, folder, sample_questions=[f"What about {name}?"]))
        write_tenants(*tenants)
        result = subprocess.run(
            [sys.executable, "-m", "rag_platform.cli", "demo"],
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
        final = json.loads(_last_line(out))
        assert 0 < final["first_answer_seconds"] < final["seconds"]
        assert [t["tenant"] for t in final["tenants"]] == ["first", "second"]
        # the first answer is printed before the second tenant's run summary
        assert out.index("[first] Q: What about first?") < out.index('"tenant": "second"')
        assert "Backups are kept for 30 days." in out and "time to first answer" in out
        assert "serving.access" not in result.stdout + result.stderr  # the API log is a file
        assert list((rag_home.home / "logs").glob("serve-*.log"))
        # no daemon ran beside the demo, so no sensor launched a second run of a tenant
        from rag_platform.runner import dagster_instance

        instance = dagster_instance(rag_home)
        try:
            assert instance.get_daemon_heartbeats() == {}
            runs = instance.get_runs()
            assert sorted(r.tags.get("dagster/partition") for r in runs) == ["first", "second"]
            assert not [r for r in runs if "dagster/sensor_name" in r.tags]
        finally:
            instance.dispose()

"""The console script, in-process through Typer's runner, on a temporary RAG_HOME."""

from __future__ import annotations

import json

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

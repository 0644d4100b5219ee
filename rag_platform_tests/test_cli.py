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

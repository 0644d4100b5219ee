"""deploy/: the Grafana dashboard and the Prometheus alert rules are valid (promtool), behave as
specified (promtool's rule unit tests), and use only metrics the API's ``/metrics`` exposes; the
index-status gauges follow the published versions."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from rag_platform.settings import PROJECT_ROOT
from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World
from rag_platform_tests.serving.factories import bearer
from serving.main import create_app
from serving.observability import IndexStatusCollector, TenantIndexStatus

DEPLOY = PROJECT_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "rag-platform.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b(rag_[a-z0-9_]+)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not installed (Debian's prometheus package; scripts/setup.sh --dev)"
        if os.environ.get("RAG_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (RAG_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    dash = json.loads(DASHBOARD.read_text())
    walk(dash["panels"])
    exprs.extend(v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query")
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition can hold (a histogram's ``_bucket/_sum/_count``)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class TestPromtool:
    def test_the_rules_and_the_scrape_config_check(self) -> None:
        tool = promtool()
        r = run(tool, "check", "rules", "alerts.yml", cwd=RULES.parent)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS: 7 rules found" in r.stdout
        r = run(tool, "check", "config", "prometheus.yml", cwd=RULES.parent)
        assert r.returncode == 0, r.stdout + r.stderr

    def test_a_broken_rule_fails_the_check(self, tmp_path: Path) -> None:
        tool = promtool()
        rules = yaml.safe_load(RULES.read_text())
        rules["groups"][0]["rules"][0]["expr"] = "sum(rate(rag_http_requests_total[5m]) >"
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
        r = run(tool, "check", "rules", "alerts.yml", cwd=tmp_path)
        assert r.returncode != 0

    def test_the_rule_unit_tests_pass(self) -> None:
        r = run(promtool(), "test", "rules", "alerts_test.yml", cwd=RULES.parent)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout

    def test_the_unit_tests_fail_when_a_threshold_drifts(self, tmp_path: Path) -> None:
        tool = promtool()
        text = RULES.read_text().replace("> 0.01", "> 0.05")  # error-rate alert at 5%
        (tmp_path / "alerts.yml").write_text(text)
        shutil.copy(RULES.parent / "alerts_test.yml", tmp_path / "alerts_test.yml")
        r = run(tool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
        assert r.returncode != 0
        assert "RagApiHighErrorRate" in r.stdout + r.stderr


class TestNoDrift:
    def test_the_dashboard_shows_what_the_issue_asks(self) -> None:
        exprs = "\n".join(dashboard_exprs())
        for needle in (
            "rag_http_requests_total",
            "histogram_quantile(0.5,",
            "histogram_quantile(0.95,",
            "histogram_quantile(0.99,",
            'status=~"5.."',
            'rag_cache_requests_total{result="hit"}',
            "rag_answer_seconds_bucket",
            "rag_llm_tokens_total",
            "rag_llm_fallbacks_total",
            "rag_index_published_info",
            "time() - rag_index_published_timestamp_seconds",
        ):
            assert needle in exprs, needle

    def test_every_metric_the_dashboard_and_rules_use_is_exposed(
        self, client: TestClient, world: World
    ) -> None:
        r = client.post(
            "/v1/query", json={"query": "aspirin"}, headers=bearer(world.keys["a_reader"])
        )
        assert r.status_code == 200
        exposed = exposed_names(client.get("/metrics").text)
        used = {m for e in dashboard_exprs() + rule_exprs() for m in METRIC.findall(e)}
        assert len(used) >= 15
        assert used - exposed == set()

    def test_the_drift_check_can_fail(self) -> None:
        assert "rag_http_requests_total" in exposed_names(
            "# TYPE rag_http_requests_total counter\n"
        )
        assert "rag_no_such_metric" not in exposed_names("# TYPE rag_other gauge\nrag_other 1\n")

    def test_the_fallback_counter_has_the_name_the_router_increments(
        self, client: TestClient
    ) -> None:
        metrics = client.app.state.metrics  # type: ignore[attr-defined]
        metrics.llm_fallbacks.labels("next_model", "timeout", TENANT_A).inc()
        text = client.get("/metrics").text
        assert (
            f'rag_llm_fallbacks_total{{fallback="next_model",reason="timeout",tenant="{TENANT_A}"}}'
            " 1.0" in text
        )


class TestIndexStatus:
    def test_the_published_versions_of_the_registered_tenants(
        self, world: World, tmp_path: Path
    ) -> None:
        registry = tmp_path / "tenants.yaml"
        tenants = [{"id": TENANT_A}, {"id": TENANT_B}, {"id": "initech"}]  # initech: unpublished
        registry.write_text(yaml.safe_dump({"tenants": tenants}))
        settings = world.settings.model_copy(update={"tenants_file": registry})
        with TestClient(create_app(settings)) as c:  # a scrape opens no shard
            text = c.get("/metrics").text
        for tenant in (TENANT_A, TENANT_B):
            assert f'rag_tenant_ready{{tenant="{tenant}"}} 1.0' in text
            assert f'rag_index_published_info{{tenant="{tenant}",version="v1"}} 1.0' in text
            published = re.search(
                rf'rag_index_published_timestamp_seconds{{tenant="{tenant}"}} (\S+)', text
            )
            assert published is not None
            assert 0 <= time.time() - float(published.group(1)) < 3600
        assert 'rag_tenant_ready{tenant="initech"} 0.0' in text
        assert 'rag_index_published_info{tenant="initech"' not in text
        assert "rag_tenants 3.0" in text
        assert "rag_tenants_not_ready 1.0" in text
        assert "rag_tenants_publish_overdue 0.0" in text
        assert "rag_index_status_up 1.0" in text

    def test_not_ready_overdue_and_unreadable(self) -> None:
        now = 1_000_000.0
        statuses = [
            TenantIndexStatus("fresh", True, "v2", now - 60),
            TenantIndexStatus("stale", True, "v1", now - 7200),
            TenantIndexStatus("new", False),
        ]
        c = IndexStatusCollector(lambda: statuses, 3600, tenant_labels=False, now=lambda: now)
        values = {m.name: m.samples[0].value for m in c.collect() if m.samples}
        assert values["rag_tenants"] == 3
        assert values["rag_tenants_not_ready"] == 1
        assert values["rag_tenants_publish_overdue"] == 1  # "stale"; "new" is not ready instead
        assert "rag_tenant_ready" not in values  # no tenant ids without tenant labels

        def down() -> list[TenantIndexStatus]:
            raise ConnectionError("database down")

        c = IndexStatusCollector(down, 3600, tenant_labels=True, now=time.time)
        values = {m.name: m.samples[0].value for m in c.collect()}
        assert values == {"rag_index_status_up": 0, "rag_index_publish_max_age_seconds": 3600}

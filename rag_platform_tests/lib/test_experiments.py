"""Online experiments: the deterministic assignment, the variant settings, and the report's
per-variant figures and significance tests on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from rag_platform.cli import app as cli_app
from rag_platform.lib.experiments import assign, bucket, experiment_report
from rag_platform.lib.store import MetadataStore, QueryLogEntry
from rag_platform.lib.tenants import RetrievalSettings, TenantConfig
from rag_platform.settings import Settings
from rag_platform_tests.utils.services import fresh_postgres_database

EXPERIMENT = {
    "id": "fusion-2026",
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "rrf", "share": 0.5, "retrieval": {"fusion": "rrf", "rrf_k": 2}},
    ],
}


def _tenant(**extra: object) -> TenantConfig:
    return TenantConfig.model_validate(
        {"id": "acme", "retrieval": {"dense_prefetch": 50}, "experiment": EXPERIMENT, **extra}
    )


class TestAssignment:
    def test_deterministic_and_close_to_the_shares(self) -> None:
        tenant = _tenant()
        keys = [f"{i:012x}" for i in range(4000)]
        first = [assign(tenant, k, tenant.retrieval).variant for k in keys]
        assert first == [assign(tenant, k, tenant.retrieval).variant for k in keys]
        counts = Counter(first)
        assert abs(counts["control"] / len(keys) - 0.5) < 0.03  # binomial sd 0.008
        assert bucket("acme", "fusion-2026", "k") != bucket("acme", "other", "k")

    def test_variant_settings_extend_the_tenants(self) -> None:
        tenant = _tenant()
        rrf = tenant.variant_retrieval("rrf")
        assert (rrf.fusion, rrf.rrf_k, rrf.dense_prefetch) == ("rrf", 2, 50)
        assert tenant.variant_retrieval("control") == tenant.retrieval
        key = next(
            f"{i:012x}" for i in range(100) if bucket("acme", "fusion-2026", f"{i:012x}") >= 0.5
        )
        got = assign(tenant, key, tenant.retrieval)
        assert (got.experiment, got.variant, got.retrieval) == ("fusion-2026", "rrf", rrf)

    def test_no_or_disabled_experiment_keeps_the_tenant_settings(self) -> None:
        plain = TenantConfig(id="acme")
        assert assign(plain, "k", plain.retrieval).variant == ""
        off = _tenant(experiment={**EXPERIMENT, "enabled": False})
        assert assign(off, "k", off.retrieval).experiment == ""
        assert assign(None, "k", RetrievalSettings()).variant == ""

    @pytest.mark.parametrize(
        "variants, message",
        [
            ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}], "sum to 0.9"),
            ([{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}], "unique"),
            (
                [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "retrieval": {"x": 1}}],
                "unknown retrieval",
            ),
            (
                [
                    {"name": "a", "share": 0.5},
                    {"name": "b", "share": 0.5, "retrieval": {"rrf_k": 0}},
                ],
                "rrf_k",
            ),
        ],
    )
    def test_bad_experiments_are_refused(self, variants: list, message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            _tenant(experiment={"id": "x", "variants": variants})


def _log(store: MetadataStore, variant: str, n: int, rating: int, refused: int, ms: float) -> None:
    entries = [
        QueryLogEntry(
            tenant="acme",
            key_id=f"{variant[:4]}{i:08d}",
            endpoint="query",
            experiment="fusion-2026",
            variant=variant,
            latency_ms=ms + i % 7,
            cited_chunk_ids=[] if i < refused else ["c"],
        )
        for i in range(n)
    ]
    store.log_queries(entries)
    for e in entries:
        store.add_feedback(
            e.query_id, "acme", e.key_id, rating if e.latency_ms % 2 else rating - 1, "answer"
        )


@pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_report_finds_a_real_difference_and_no_false_one(db: str, tmp_path: Path) -> None:
    def run(url: str) -> None:
        store = MetadataStore(url)
        store.migrate()
        store.upsert_tenant("acme")
        _log(store, "control", 40, 3, 4, 100.0)
        _log(store, "rrf", 40, 5, 20, 100.0)
        store.log_queries(
            [QueryLogEntry(tenant="acme", endpoint="query", experiment="old", variant="x")]
        )
        report = experiment_report(store, _tenant())
        assert report["queries"] == 80
        control, rrf = report["variants"]["control"], report["variants"]["rrf"]
        assert (control["queries"], control["rated"], control["refusals"]) == (40, 40, 4)
        assert rrf["refusal_rate"] == 0.5 and control["refusal_rate"] == 0.1
        assert rrf["mean_rating"] > control["mean_rating"]
        tests = report["tests"]
        assert tests["rating"]["test"] == "mann-whitney-u" and tests["rating"]["p_value"] < 0.001
        assert (
            tests["refusal_rate"]["test"] == "chi-square" and tests["refusal_rate"]["significant"]
        )
        assert not tests["latency"]["significant"]  # the same latencies in both
        assert report["significant"] == ["rating", "refusal_rate"]
        store.dispose()

    if db == "sqlite":
        run(f"sqlite:///{tmp_path / 'meta.db'}")
    else:
        with fresh_postgres_database() as url:
            run(url)


def test_cli_report_last_line_is_json(rag_home: Settings, write_tenants) -> None:  # type: ignore[no-untyped-def]
    write_tenants({"id": "acme", "experiment": EXPERIMENT})
    store = MetadataStore.from_settings(rag_home)
    store.migrate()
    store.upsert_tenant("acme")
    _log(store, "control", 3, 4, 0, 50.0)
    _log(store, "rrf", 1, 4, 0, 50.0)
    store.dispose()
    result = CliRunner().invoke(cli_app, ["experiments", "report", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["variants"]["rrf"]["queries"] == 1
    assert report["tests"]["rating"]["p_value"] is None  # one rating in rrf: no test
    assert "mann-whitney-u" in result.stdout
    unknown = CliRunner().invoke(cli_app, ["experiments", "report", "--tenant", "nope"])
    assert unknown.exit_code == 2

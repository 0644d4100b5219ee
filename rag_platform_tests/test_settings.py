"""Settings refuse placeholder secrets outside development; the runtime is configured by the
entry points, not by importing the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rag_platform.settings import RUNTIME_ENV, Settings


@pytest.mark.parametrize("environment", ["test", "production"])
@pytest.mark.parametrize("pepper", [None, "dev", "", "changethis", "Secret"])
def test_outside_development_a_default_or_placeholder_pepper_is_refused(
    environment: str, pepper: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAG_KEY_PEPPER", raising=False)
    values = {"environment": environment} | ({} if pepper is None else {"key_pepper": pepper})
    with pytest.raises(ValidationError, match="RAG_KEY_PEPPER"):
        Settings(**values)  # type: ignore[arg-type]


def test_a_real_pepper_is_accepted_and_development_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAG_KEY_PEPPER", raising=False)
    assert Settings(environment="production", key_pepper="9f2c0e-real").key_pepper
    assert Settings(environment="development").key_pepper == "dev"
    monkeypatch.setenv("RAG_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="RAG_KEY_PEPPER"):
        Settings()


def _child(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_importing_settings_changes_no_environment_variable() -> None:
    code = "import os, json, rag_platform.settings; print(json.dumps(sorted(os.environ)))"
    names = set(json.loads(_child(code, {})))
    assert not names & set(RUNTIME_ENV)


def test_configure_runtime_env_sets_defaults_keeps_operator_values_and_is_idempotent() -> None:
    code = (
        "import os, json; from rag_platform.settings import configure_runtime_env as c; "
        "c(); c(); print(json.dumps({k: os.environ.get(k) for k in "
        "['HF_HUB_OFFLINE', 'GX_ANALYTICS_ENABLED', 'RAGAS_DO_NOT_TRACK', "
        "'TOKENIZERS_PARALLELISM']}))"
    )
    got = json.loads(_child(code, {"TOKENIZERS_PARALLELISM": "true"}))
    assert got == {
        "HF_HUB_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "RAGAS_DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "true",  # the operator's value wins
    }


def test_configure_runtime_env_undoes_ignored_sigint_and_sigterm() -> None:
    code = (
        "import signal; from rag_platform.settings import configure_runtime_env; "
        "before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)); "
        "configure_runtime_env(); "
        "print(before == (signal.SIG_IGN, signal.SIG_IGN), "
        "signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
        "signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"
    )
    out = subprocess.run(
        ["bash", "-c", f'trap "" INT TERM; exec {sys.executable} -c "$0"', code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "True", "True"]


def test_oidc_settings_are_all_or_nothing_and_read_from_rag_oidc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().oidc_enabled is False
    with pytest.raises(ValidationError, match="set together"):
        Settings(oidc_issuer="https://idp.example")
    with pytest.raises(ValidationError, match="http"):
        Settings(
            oidc_issuer="https://idp.example",
            oidc_audience="rag",
            oidc_jwks_url="file:///etc/passwd",
        )
    monkeypatch.setenv("RAG_OIDC_ISSUER", "https://idp.example")
    monkeypatch.setenv("RAG_OIDC_AUDIENCE", "rag")
    monkeypatch.setenv("RAG_OIDC_JWKS_URL", "https://idp.example/certs")
    monkeypatch.setenv("RAG_OIDC_GROUPS_CLAIM", "realm_access.groups")
    settings = Settings()
    assert settings.oidc_enabled
    assert (settings.oidc_tenant_claim, settings.oidc_groups_claim, settings.oidc_role_claim) == (
        "tenant",
        "realm_access.groups",
        "role",
    )

"""Schemathesis against the app's own OpenAPI schema, over loopback HTTP with a valid key.

The app runs under uvicorn on 127.0.0.1 (a real server, lifespan included) over the two-tenant
world; every operation gets generated bodies, paths and headers. Checks: no 5xx, documented
status codes, responses matching their schemas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from rag_platform.lib.net import free_port
from rag_platform.settings import Settings
from rag_platform_tests.serving.conftest import World
from rag_platform_tests.serving.factories import bearer
from serving.main import create_app

schema = schemathesis.openapi.from_dict(
    create_app(Settings(environment="test", key_pepper="test-pepper")).openapi()
)


@pytest.fixture(scope="module")
def server_url(world: World) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(world.settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case, server_url: str, world: World) -> None:
    # The admin key reaches every operation's handler (admin endpoints too).
    case.call_and_validate(
        base_url=server_url,
        headers=bearer(world.keys["a_admin"]),
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        timeout=30,
    )

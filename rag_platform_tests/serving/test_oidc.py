"""Single sign-on: OIDC JWT bearer tokens signed by real keys, the JWKS served over HTTP by a local
server the test starts, against the real app with published shards and doc-level ACLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from rag_platform.lib.auth.oidc import OidcConfig, OidcError, OidcVerifier, claim, principal_id
from rag_platform_tests.serving.conftest import TENANT_A, TENANT_B, World, build_world
from rag_platform_tests.serving.factories import bearer, fast_home
from rag_platform_tests.serving.test_auth import assert_error
from serving.main import create_app

ISSUER = "https://idp.example.test/realms/rag"
AUDIENCE = "rag-api"
#: Forced JWKS refreshes are at most one per this many seconds in these tests.
COOLDOWN_S = 2.0


@dataclass
class Jwks:
    """A JWKS endpoint on loopback: ``keys`` is what it serves; ``fetches`` counts GETs."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with jwks.lock:
                    jwks.fetches += 1
                    body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}/protocol/openid-connect/certs"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    """The public JWK of an RSA or EC private key, with ``kid``, ``use`` and ``alg``."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
        jwk["alg"] = "RS256"
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
        jwk["alg"] = "ES256"
    return {**jwk, "kid": kid, "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-123",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "tenant": TENANT_A,
        "groups": ["all"],
        "role": "reader",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@dataclass
class Idp:
    """The identity provider: its signing keys and JWKS server."""

    jwks: Jwks
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey

    def token(self, alg: str = "RS256", kid: str | None = None, **overrides: Any) -> str:
        key: Any = self.rsa_key if alg == "RS256" else self.ec_key
        kid = kid or ("rsa-1" if alg == "RS256" else "ec-1")
        return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    jwks = Jwks()
    server = jwks.serve()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks.keys = [public_jwk(rsa_key, "rsa-1"), public_jwk(ec_key, "ec-1")]
    yield Idp(jwks, rsa_key, ec_key)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sso_world(idp: Idp) -> Iterator[World]:
    with fast_home("rag-oidc-") as home:
        w = build_world(
            home,
            oidc_issuer=ISSUER,
            oidc_audience=AUDIENCE,
            oidc_jwks_url=idp.jwks.url,
            oidc_jwks_refresh_cooldown_seconds=COOLDOWN_S,
            oidc_leeway_seconds=10,
        )
        yield w
        w.store.dispose()


@pytest.fixture(scope="module")
def sso(sso_world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sso_world.settings)) as c:
        yield c


def _search(client: TestClient, token: str, query: str = "vitamin D deficiency") -> Any:
    return client.post("/v1/search", json={"query": query, "top_k": 10}, headers=bearer(token))


def _b64(obj: dict[str, Any] | bytes) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_with_public_key(idp: Idp) -> str:
    """An HS256 token keyed with the RSA public key's PEM: the RS/HS confusion attack (RFC 8725
    §2.1), signed by hand because PyJWT refuses to make one."""
    pem = idp.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


class TestValidTokens:
    @pytest.mark.parametrize("alg", ["RS256", "ES256"])
    def test_token_searches_with_its_groups(
        self, sso: TestClient, sso_world: World, idp: Idp, alg: str
    ) -> None:
        hidden = sso_world.hidden_doc.title
        r = _search(sso, idp.token(alg), hidden)
        assert r.status_code == 200, r.text
        ids = [h["chunk_id"] for h in r.json()["hits"]]
        assert len(ids) == 10 and sso_world.hidden_chunk_id not in ids
        assert ids and set(ids) <= sso_world.chunk_ids_of(TENANT_A)
        r = _search(sso, idp.token(alg, groups=["all", "secret"]), hidden)
        assert r.json()["hits"][0]["chunk_id"] == sso_world.hidden_chunk_id

    def test_tenant_comes_from_the_token(self, sso: TestClient, sso_world: World, idp: Idp) -> None:
        r = _search(sso, idp.token(tenant=TENANT_B))
        assert r.status_code == 200
        assert {h["chunk_id"] for h in r.json()["hits"]} <= sso_world.chunk_ids_of(TENANT_B)

    def test_role_claim_gates_admin_routes(
        self, sso: TestClient, sso_world: World, idp: Idp
    ) -> None:
        assert_error(sso.get("/v1/admin/keys", headers=bearer(idp.token())), 403, "forbidden")
        admin = bearer(idp.token(role="admin", sub="alice@example.test"))
        r = sso.get("/v1/admin/keys", headers=admin)
        assert r.status_code == 200, r.text
        _, doomed = sso_world.store.create_api_key(TENANT_A, ["all"], name="doomed")
        key_id = doomed.split("_")[1]
        r = sso.post(f"/v1/admin/keys/{key_id}/revoke", headers=admin)
        assert r.status_code == 200, r.text
        (row,) = sso_world.store.list_audit(TENANT_A, action="key.revoke")
        assert row.actor == "oidc:alice@example.test"

    def test_api_keys_still_work_beside_sso(self, sso: TestClient, sso_world: World) -> None:
        assert _search(sso, sso_world.keys["a_reader"]).status_code == 200

    def test_small_clock_skew_is_tolerated(self, sso: TestClient, idp: Idp) -> None:
        now = int(time.time())
        assert _search(sso, idp.token(exp=now - 3)).status_code == 200  # leeway 10 s
        assert _search(sso, idp.token(nbf=now + 3)).status_code == 200


class TestRefusedTokens:
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda idp: idp.token(exp=int(time.time()) - 60), id="expired"),
            pytest.param(lambda idp: idp.token(nbf=int(time.time()) + 60), id="not-yet-valid"),
            pytest.param(lambda idp: idp.token(aud="another-api"), id="wrong-audience"),
            pytest.param(lambda idp: idp.token(iss="https://evil.example/"), id="wrong-issuer"),
            pytest.param(lambda idp: idp.token(exp=None), id="no-exp"),
            pytest.param(lambda idp: idp.token(sub=None), id="no-sub"),
            pytest.param(lambda idp: idp.token(tenant=None), id="no-tenant"),
            pytest.param(
                lambda idp: jwt.encode(
                    claims(),
                    rsa.generate_private_key(public_exponent=65537, key_size=2048),
                    algorithm="RS256",
                    headers={"kid": "rsa-1"},
                ),
                id="wrong-key",
            ),
            pytest.param(
                lambda idp: (
                    f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(claims())}."
                ),
                id="alg-none",
            ),
            pytest.param(
                lambda idp: hs256_with_public_key(idp),
                id="hs256-with-public-key",
            ),
            pytest.param(lambda idp: idp.token("ES256", kid="rsa-1"), id="es256-on-rsa-kid"),
            pytest.param(lambda idp: idp.token(kid="never-published"), id="unknown-kid"),
            pytest.param(
                lambda idp: idp.token()[:-6] + ("AAAAAA" if idp.token()[-6:] != "AAAAAA" else "B"),
                id="tampered-signature",
            ),
        ],
    )
    def test_refused_with_401(self, sso: TestClient, idp: Idp, make: Any) -> None:
        r = _search(sso, make(idp))
        assert_error(r, 401, "invalid_token")
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]

    def test_payload_swapped_under_a_valid_signature_is_401(
        self, sso: TestClient, idp: Idp
    ) -> None:
        header, _, signature = idp.token().split(".")
        forged = f"{header}.{_b64(claims(groups=['all', 'secret']))}.{signature}"
        assert_error(_search(sso, forged), 401, "invalid_token")

    @pytest.mark.parametrize(
        ("overrides", "code"),
        [
            ({"tenant": "nobody"}, "unknown_tenant"),
            ({"tenant": "../acme"}, "unknown_tenant"),
            ({"groups": None}, "invalid_groups"),
            ({"groups": "all"}, "invalid_groups"),
            ({"groups": ["all", "with space"]}, "invalid_groups"),
            ({"groups": ["all", 7]}, "invalid_groups"),
            ({"role": "superuser"}, "invalid_role"),
            ({"role": ["admin"]}, "invalid_role"),
        ],
    )
    def test_claims_that_map_to_no_allowed_principal_are_403(
        self, sso: TestClient, idp: Idp, overrides: dict[str, Any], code: str
    ) -> None:
        assert_error(_search(sso, idp.token(**overrides)), 403, code)

    def test_tokens_refused_when_sso_is_not_configured(self, client: TestClient, idp: Idp) -> None:
        assert_error(_search(client, idp.token()), 401, "invalid_token")


class TestKeyRotation:
    def test_new_kid_is_fetched_within_the_cooldown_and_unknown_kids_are_rate_bounded(
        self, sso: TestClient, idp: Idp
    ) -> None:
        assert _search(sso, idp.token()).status_code == 200  # the key set is cached
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with idp.jwks.lock:
            idp.jwks.keys = [*idp.jwks.keys, public_jwk(new_key, "rsa-2")]
        rotated = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
        before = idp.jwks.fetches
        deadline = time.monotonic() + 30
        while (r := _search(sso, rotated)).status_code != 200:
            assert_error(r, 401, "invalid_token")
            assert time.monotonic() < deadline, "the rotated key was never picked up"
            time.sleep(0.2)
        assert idp.jwks.fetches > before  # fetched again for the unknown kid
        # a burst of random kids forces at most one refresh per cooldown
        start, before = time.monotonic(), idp.jwks.fetches
        for i in range(30):
            assert_error(_search(sso, idp.token(kid=f"random-{i}")), 401, "invalid_token")
        elapsed = time.monotonic() - start
        assert idp.jwks.fetches - before <= int(elapsed / COOLDOWN_S) + 1
        # the old key still verifies (both are published during a rotation)
        assert _search(sso, idp.token()).status_code == 200


class TestVerifierUnit:
    def test_unreachable_jwks_is_503_not_401(self) -> None:
        verifier = OidcVerifier(
            OidcConfig(ISSUER, AUDIENCE, "http://127.0.0.1:1/certs", jwks_timeout_seconds=1),
            lambda tenant: True,
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k"})
        with pytest.raises(OidcError) as info:
            verifier.authenticate(token)
        assert (info.value.status, info.value.code) == (503, "identity_provider_unavailable")

    def test_last_key_set_is_used_while_the_jwks_endpoint_is_down(self) -> None:
        jwks = Jwks()
        server = jwks.serve()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks.keys = [public_jwk(key, "k1")]
        verifier = OidcVerifier(
            OidcConfig(ISSUER, AUDIENCE, jwks.url, jwks_cache_seconds=0.2, jwks_timeout_seconds=1),
            lambda tenant: True,
        )
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k1"})
        assert verifier.authenticate(token).tenant == TENANT_A
        server.shutdown()
        server.server_close()
        cache = verifier._jwks.jwk_set_cache
        assert cache is not None
        deadline = time.monotonic() + 10
        while not cache.is_expired():  # 0.2 s lifespan
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the expired cache makes it fetch; the endpoint is closed; the last set is used
        assert verifier.authenticate(token).tenant == TENANT_A
        assert not cache.is_expired()
        with pytest.raises(OidcError) as info:
            verifier.authenticate(
                jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k9"})
            )
        assert info.value.status == 401

    def test_dotted_claims_and_principal_ids(self) -> None:
        assert claim({"realm_access": {"roles": ["admin"]}}, "realm_access.roles") == ["admin"]
        assert claim({"https://x/tenant": "acme"}, "https://x/tenant") == "acme"
        assert claim({"a": 1}, "a.b") is None
        pid = principal_id(ISSUER, "user-123")
        assert len(pid) == 12 and pid[0] == "o" and pid != principal_id(ISSUER, "user-124")

    def test_non_http_jwks_url_is_refused(self) -> None:
        with pytest.raises(ValueError, match="JWKS"):
            OidcVerifier(OidcConfig(ISSUER, AUDIENCE, "file:///etc/passwd"), lambda t: True)

"""OpenID Connect single sign-on: an identity provider's JWT access or ID token → a principal.

The API accepts, beside its own API keys, ``Authorization: Bearer <JWT>`` tokens signed by the
configured issuer (OpenID Connect Core 1.0 §3.1.3.7, RFC 7519, RFC 8725 "JWT Best Current
Practices"):

- the algorithm comes from an allow-list, never from the token alone: ``RS256`` (RSA PKCS#1 v1.5
  with SHA-256) or ``ES256`` (ECDSA P-256 with SHA-256), and must match the type of the JWKS key
  named by the token's ``kid`` (so ``alg: none`` and ``HS256`` with the public key as the HMAC
  secret, the classic confusion attack of RFC 8725 §2.1, are rejected before any verification);
- the keys come from the issuer's JWKS (RFC 7517), fetched by PyJWT's ``PyJWKClient``: the key
  set is cached for ``jwks_cache_seconds``, an unknown ``kid`` (a rotated key) forces one
  refresh, and forced refreshes are at most one per ``jwks_refresh_cooldown_seconds``, so
  tokens with random ``kid`` values cannot turn the API into a flood against the issuer; while
  the endpoint is unreachable the last key set fetched stays in use;
- ``iss``, ``aud``, ``exp``, ``sub`` are required; ``iss`` and ``aud`` must equal the configured
  values; ``exp`` and ``nbf`` are checked with ``leeway_seconds`` of clock skew;
- the principal's tenant, groups and role are read from configured claims (a dotted name such as
  ``realm_access.roles`` reaches a nested claim when no claim has the literal name). The tenant
  must exist, every group must be a valid ACL group name, the role must be ``reader`` or
  ``admin`` (``reader`` when the claim is absent); anything else fails closed.

Plain Python: the API (``serving/api/deps.py``) maps :class:`OidcError` to its JSON error shape.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError

from rag_platform.lib.models import Principal
from rag_platform.lib.tenants import TENANT_ID_PATTERN, validate_acl_group

#: Signature algorithms accepted, each with the JWK key type (``kty``) it needs.
ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
#: Longest token accepted, in characters (a JWT with a few dozen groups is ~2-4 KB).
MAX_TOKEN_CHARS = 16 * 1024
#: Most groups a token may carry.
MAX_GROUPS = 256
#: Prefix of a JWT's base64url header (``{"`` encodes to ``eyJ``): tells a JWT from an API key.
_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_ROLES = ("reader", "admin")

logger = logging.getLogger(__name__)


class StaleIfErrorJWKClient(PyJWKClient):
    """``PyJWKClient`` that keeps using the last key set it fetched while the JWKS endpoint is
    unreachable (the ``stale-if-error`` of RFC 5861), so an identity-provider outage does not
    log every user out when the cache expires; with no key set fetched yet the error stands."""

    _last_good: Any = None

    def fetch_data(self) -> Any:
        try:
            data = super().fetch_data()
        except PyJWKClientConnectionError:
            if self._last_good is None:
                raise
            logger.warning("the JWKS endpoint is unreachable; using the last key set fetched")
            return self._last_good
        self._last_good = data
        return data


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the compact JWS shape ``header.payload.signature`` (RFC 7515 §7.1)
    with a JSON header; API keys (``rag_<id>_<secret>``) never do."""
    return len(token) <= MAX_TOKEN_CHARS and _JWT_SHAPE.match(token) is not None


class OidcError(Exception):
    """A token that does not authenticate (401) or maps to no allowed principal (403), or an
    issuer whose keys cannot be fetched (503).

    Attributes:
        status: 401, 403 or 503.
        code: ``invalid_token``, ``unknown_tenant``, ``invalid_groups``, ``invalid_role`` or
            ``identity_provider_unavailable``.
        message: Safe to show the client (never echoes the token).
    """

    def __init__(self, status: Literal[401, 403, 503], code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OidcConfig:
    """What the verifier trusts and how it maps claims (``Settings.oidc_*``).

    Attributes:
        issuer: Expected ``iss``, e.g. ``https://login.example.com/realms/acme``.
        audience: Expected ``aud`` (the API's client id at the issuer).
        jwks_url: The issuer's JWKS endpoint (``jwks_uri`` of its discovery document);
            ``http`` or ``https`` only.
        tenant_claim: Claim holding the tenant id.
        groups_claim: Claim holding the list of ACL groups.
        role_claim: Claim holding ``reader`` or ``admin``.
        leeway_seconds: Clock skew allowed on ``exp``, ``nbf`` and ``iat``, in seconds.
        jwks_cache_seconds: How long a fetched key set is used before it is fetched again.
        jwks_refresh_cooldown_seconds: Least time between two refreshes forced by an unknown
            ``kid``, in seconds.
        jwks_timeout_seconds: Timeout of one JWKS request, in seconds.
    """

    issuer: str
    audience: str
    jwks_url: str
    tenant_claim: str = "tenant"
    groups_claim: str = "groups"
    role_claim: str = "role"
    leeway_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0
    jwks_refresh_cooldown_seconds: float = 30.0
    jwks_timeout_seconds: float = 5.0


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """The value of claim ``name``: the top-level claim of that exact name, else the nested
    value of a dotted path (``realm_access.roles``); None when absent."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def principal_id(issuer: str, subject: str) -> str:
    """The 12-character principal id of an OIDC subject: ``"o"`` + the first 11 hex characters
    of ``SHA-256(issuer + "\\n" + subject)``. API-key ids are 12 hex characters, so the two
    never collide (``o`` is not a hex digit); rate limits and the query log use it like a key
    id."""
    return "o" + hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:11]


class OidcVerifier:
    """Verifies OIDC bearer tokens and maps them to principals.

    Args:
        config: Issuer, audience, JWKS endpoint and claim names.
        tenant_exists: Whether a tenant id is known (the metadata store's tenants); may raise
            when the store is down (the caller maps that to 503).

    Raises:
        ValueError: ``config.jwks_url`` is not ``http(s)``.
    """

    def __init__(self, config: OidcConfig, tenant_exists: Callable[[str], bool]) -> None:
        self.config = config
        self._tenant_exists = tenant_exists
        try:
            self._jwks = StaleIfErrorJWKClient(
                config.jwks_url,
                cache_jwk_set=True,
                lifespan=config.jwks_cache_seconds,
                timeout=config.jwks_timeout_seconds,
                cooldown_duration=config.jwks_refresh_cooldown_seconds,
            )
        except PyJWKClientError as exc:
            raise ValueError(f"invalid RAG_OIDC_JWKS_URL: {exc}") from exc

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``.

        Raises:
            OidcError: 401 ``invalid_token`` (malformed, algorithm not allowed, unknown ``kid``,
                bad signature, wrong ``iss`` or ``aud``, expired, not yet valid, a required
                claim missing); 503 ``identity_provider_unavailable`` (the JWKS cannot be
                fetched and has no cached key of that ``kid``).
        """
        if not looks_like_jwt(token):
            raise OidcError(401, "invalid_token", "the bearer token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError(401, "invalid_token", "the token header is malformed") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise OidcError(
                401,
                "invalid_token",
                f"token algorithm {str(alg)[:20]!r} is not allowed (only RS256, ES256)",
            )
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise OidcError(401, "invalid_token", "the token header has no key id (kid)")
        try:
            key = self._jwks.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise OidcError(
                503, "identity_provider_unavailable", "the identity provider's keys are unreachable"
            ) from exc
        except (PyJWKClientError, jwt.PyJWTError) as exc:
            raise OidcError(401, "invalid_token", "the token's signing key is unknown") from exc
        if key.key_type != ALGORITHMS[alg] or key.algorithm_name != alg:
            raise OidcError(401, "invalid_token", f"key {kid[:64]!r} is not an {alg} key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise OidcError(401, "invalid_token", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise OidcError(401, "invalid_token", "the token is not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise OidcError(401, "invalid_token", "the token is not for this API (aud)") from exc
        except jwt.InvalidIssuerError as exc:
            raise OidcError(401, "invalid_token", "the token's issuer is not trusted") from exc
        except jwt.InvalidSignatureError as exc:
            raise OidcError(401, "invalid_token", "the token's signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise OidcError(401, "invalid_token", f"the token is invalid: {exc}"[:200]) from exc
        return claims

    def authenticate(self, token: str) -> Principal:
        """The principal of a valid token.

        Returns:
            ``Principal(key_id=principal_id(iss, sub), tenant, groups, role, name=sub)``.

        Raises:
            OidcError: As :meth:`verify`; 401 ``invalid_token`` when ``sub`` or the tenant claim
                is missing or not a string; 403 ``unknown_tenant``, ``invalid_groups`` (claim
                missing, not a list of valid group names, or over :data:`MAX_GROUPS`),
                ``invalid_role`` (not ``reader`` or ``admin``).
            Exception: Whatever ``tenant_exists`` raises (the store is down).
        """
        claims = self.verify(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise OidcError(401, "invalid_token", "the token has no valid subject (sub)")
        tenant = claim(claims, self.config.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise OidcError(
                401, "invalid_token", f"the token has no {self.config.tenant_claim!r} claim"
            )
        if not re.fullmatch(TENANT_ID_PATTERN, tenant) or not self._tenant_exists(tenant):
            raise OidcError(403, "unknown_tenant", "the token's tenant is not known here")
        groups = claim(claims, self.config.groups_claim)
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
            raise OidcError(
                403,
                "invalid_groups",
                f"the {self.config.groups_claim!r} claim must be a list of at most "
                f"{MAX_GROUPS} group names",
            )
        try:
            checked = [validate_acl_group(g) for g in groups if isinstance(g, str)]
        except ValueError as exc:
            raise OidcError(403, "invalid_groups", str(exc)[:200]) from exc
        if len(checked) != len(groups):
            raise OidcError(403, "invalid_groups", "every group must be a string")
        role = claim(claims, self.config.role_claim)
        role = "reader" if role is None else role
        if role not in _ROLES:
            raise OidcError(403, "invalid_role", "the token's role must be reader or admin")
        return Principal(
            key_id=principal_id(self.config.issuer, subject),
            tenant=tenant,
            groups=tuple(dict.fromkeys(checked)),
            role=role,
            name=subject[:200],
            auth="oidc",
        )

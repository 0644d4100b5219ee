"""API keys: creation, authentication, revocation and listing (``api_keys`` table).

The key format and its peppered hash are in :mod:`rag_platform.lib.store.keys`; this module
stores a key's tenant, ACL groups, role and hash, and turns a presented key into a
:class:`~rag_platform.lib.models.Principal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import select, update

from rag_platform.lib.models import Principal
from rag_platform.lib.store.audit import write_audit
from rag_platform.lib.store.db import Database
from rag_platform.lib.store.keys import generate_api_key, hash_secret, parse_api_key, verify_secret
from rag_platform.lib.store.rows import check_text, from_row, to_values
from rag_platform.lib.store.schema import ROLES, Role, api_keys_table, as_utc, utcnow
from rag_platform.lib.store.tenants import check_tenant, ensure_tenant
from rag_platform.lib.tenants import validate_acl_group

#: Stands in for the stored hash of an unknown key id, so a miss costs one comparison too.
_NO_HASH = "0" * 64


@dataclass
class ApiKeyInfo:
    """An API key as listed: every column but ``secret_hash``."""

    key_id: str
    tenant: str
    name: str
    groups: list[str]
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime | None = None) -> bool:
        """Not revoked and not expired at ``now`` (default: the current time)."""
        now = now or utcnow()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


class ApiKeyRepository:
    """The ``api_keys`` table.

    Args:
        db: The database handle.
        pepper: Server-side secret mixed into the key hashes (``Settings.key_pepper``). Keys
            created under one pepper do not authenticate under another.

    Raises:
        ValueError: For an empty pepper.
    """

    def __init__(self, db: Database, pepper: str) -> None:
        if not pepper:
            raise ValueError("the key pepper must not be empty")
        self._db = db
        self._pepper = pepper

    def create(
        self,
        tenant: str,
        groups: list[str],
        role: str = "reader",
        expires_at: datetime | None = None,
        name: str = "",
        actor: str = "cli",
    ) -> tuple[ApiKeyInfo, str]:
        """Create an API key for ``tenant`` (the tenant row is created if missing).

        Args:
            tenant: Tenant id.
            groups: ACL groups the key's principal belongs to (may be empty: sees nothing).
            role: ``"reader"`` or ``"admin"``.
            expires_at: Optional expiry (naive = UTC); must lie in the future.
            name: Free label, e.g. the application using the key.
            actor: Who creates it, for the audit row ``key.create``.

        Returns:
            ``(info, plaintext)``; the plaintext ``rag_<key_id>_<secret>`` is never stored and
            cannot be shown again.

        Raises:
            ValueError: Bad tenant id, role, group names, or an expiry in the past.
        """
        check_tenant(tenant)
        if role not in ROLES:
            raise ValueError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise ValueError(f"groups must be a list of strings, got {groups!r}")
        for group in groups:  # the same rule as the sources' ACL groups
            validate_acl_group(group)
        check_text(name, "key name", 200, allow_empty=True)
        now = utcnow()
        if expires_at is not None:
            expires_at = as_utc(expires_at)
            if expires_at <= now:
                raise ValueError(f"expires_at {expires_at.isoformat()} is not in the future")
        key_id, plaintext = generate_api_key()
        parsed = parse_api_key(plaintext)
        assert parsed is not None  # our own format
        info = ApiKeyInfo(
            key_id=key_id,
            tenant=tenant,
            name=name,
            groups=list(dict.fromkeys(groups)),
            role=cast(Role, role),  # checked against ROLES above
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        secret_hash = hash_secret(parsed[1], self._pepper)
        with self._db.transaction() as conn:
            ensure_tenant(conn, tenant_id=tenant)
            conn.execute(api_keys_table.insert().values(**to_values(info), secret_hash=secret_hash))
            write_audit(
                conn,
                action="key.create",
                tenant=tenant,
                actor=actor,
                details={
                    "key_id": key_id,
                    "name": name,
                    "groups": info.groups,
                    "role": role,
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
        return info, plaintext

    def authenticate(self, plaintext: str) -> Principal | None:
        """The principal of an API key, or None.

        None for a malformed key, an unknown key id, a wrong secret (compared in constant time
        with ``hmac.compare_digest``), a revoked or an expired key. Looks the key up on every
        call (nothing cached), so revocation takes effect on the next request.
        """
        parsed = parse_api_key(plaintext)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._db.transaction(write=False) as conn:
            row = (
                conn.execute(select(api_keys_table).where(api_keys_table.c.key_id == key_id))
                .mappings()
                .first()
            )
        if row is None:
            # Same work as for a known key, so timing does not reveal which key ids exist.
            verify_secret(secret, _NO_HASH, self._pepper)
            return None
        if not verify_secret(secret, row["secret_hash"], self._pepper):
            return None
        key = from_row(ApiKeyInfo, row)
        if not key.is_active():
            return None
        return Principal(
            key_id=key.key_id,
            tenant=key.tenant,
            groups=tuple(key.groups),
            role=key.role,
            name=key.name,
        )

    def revoke(self, key_id: str, actor: str = "cli") -> bool:
        """Revoke a key (audit ``key.revoke``).

        Returns:
            True if the key existed and was active; False if unknown or already revoked.
        """
        with self._db.transaction() as conn:
            row = conn.execute(
                select(api_keys_table.c.tenant, api_keys_table.c.revoked_at).where(
                    api_keys_table.c.key_id == key_id
                )
            ).first()
            if row is None or row.revoked_at is not None:
                return False
            conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.key_id == key_id)
                .values(revoked_at=utcnow())
            )
            write_audit(
                conn,
                action="key.revoke",
                tenant=row.tenant,
                actor=actor,
                details={"key_id": key_id},
            )
            return True

    def find(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Keys (revoked and expired included), oldest first; never the hash."""
        columns = [c for c in api_keys_table.c if c.name != "secret_hash"]
        stmt = select(*columns).order_by(api_keys_table.c.created_at, api_keys_table.c.key_id)
        if tenant is not None:
            stmt = stmt.where(api_keys_table.c.tenant == tenant)
        with self._db.transaction(write=False) as conn:
            return [from_row(ApiKeyInfo, r) for r in conn.execute(stmt).mappings()]

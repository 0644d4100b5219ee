"""Encryption at rest: per-tenant data keys (AES-256-GCM) wrapped by a master key (envelope
encryption, NIST SP 800-38D for GCM; the key hierarchy of AWS KMS "envelope encryption").

Key hierarchy:

- one **master key** per deployment: a local 256-bit key (``RAG_MASTER_KEY``, base64; or the key
  file ``RAG_MASTER_KEY_FILE``, default ``RAG_HOME/keys/master.key``, generated 0600 on first
  use), or an AWS KMS key (``RAG_KMS_KEY_ID``); behind the :class:`MasterKey` protocol;
- one **data key** per tenant: 256 random bits, stored only wrapped by the master key in the
  metadata store's ``data_keys`` table (tenant, version, wrapped key, master key id). Unwrapped
  keys live in a bounded in-memory cache (:class:`Keyring`), never on disk.

A **sealed blob** is ``MAGIC (4 bytes) | data-key version (uint32, big-endian) | nonce (12 bytes)
| AES-GCM ciphertext + 16-byte tag``; the associated data binds it to the tenant and a purpose
(``cache``, ``sync``, ``asset``, ``query_log``, ...), so a blob copied to another tenant or used
for another purpose fails to open. Sealed text (a column of text type) is the blob in base64
behind :data:`TEXT_PREFIX`. Data without the header is plaintext written before encryption was
enabled: it is returned as it is, and sealed when next rewritten.

Rotating the master key (:meth:`Keyring.rotate_master`) re-wraps every data key and touches no
sealed data. Destroying a tenant's data keys (:meth:`Keyring.destroy`) makes every blob sealed
under them unreadable for good (crypto-shredding): opening one raises :class:`KeyDestroyedError`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from rag_platform.settings import Settings

log = logging.getLogger(__name__)

#: First bytes of every sealed blob ("RAG sealed", format 1).
MAGIC = b"RGS\x01"
#: Prefix of sealed text (the sealed blob in standard base64 follows).
TEXT_PREFIX = "rgs1:"
KEY_BYTES = 32
NONCE_BYTES = 12
_HEADER = struct.Struct(">4sI12s")
#: Bytes a sealed blob adds to its plaintext (header + GCM tag).
OVERHEAD = _HEADER.size + 16


class SealedDataError(Exception):
    """A sealed blob cannot be opened: wrong tenant or purpose, tampered, an unknown data key,
    or no cipher configured to open it. Never answered with garbage."""


class KeyDestroyedError(SealedDataError):
    """The data key that sealed the blob was destroyed (crypto-shredding): the data is gone."""


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` starts with the sealed-blob header."""
    return data[:4] == MAGIC


def is_sealed_text(text: str) -> bool:
    """Whether ``text`` is sealed text (:data:`TEXT_PREFIX` + base64)."""
    return text.startswith(TEXT_PREFIX)


# ------------------------------------------------------------------------------------------
# master keys
# ------------------------------------------------------------------------------------------


class MasterKey(Protocol):
    """Wraps and unwraps data keys; ``key_id`` names the key in each wrapped row."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """The wrapped ``data_key``, bound to ``context`` (tenant and version)."""
        ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """The data key; raises :class:`SealedDataError` for a wrong key or context."""
        ...


class LocalMasterKey:
    """A 256-bit master key held by the process; wraps with AES-256-GCM (random nonce).

    Args:
        key: 32 bytes.

    Raises:
        ValueError: not 32 bytes.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._aead = AESGCM(key)
        self._id = "local:" + AESGCM(key).encrypt(b"\0" * NONCE_BYTES, b"", b"key-id")[:8].hex()

    @classmethod
    def from_base64(cls, text: str) -> LocalMasterKey:
        """From its base64 text (as in ``RAG_MASTER_KEY`` or a key file).

        Raises:
            ValueError: not base64 of 32 bytes.
        """
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a master key is 32 bytes in base64") from exc
        return cls(key)

    @classmethod
    def generate(cls) -> tuple[LocalMasterKey, str]:
        """A new random master key and its base64 text."""
        text = base64.b64encode(os.urandom(KEY_BYTES)).decode()
        return cls.from_base64(text), text

    def to_base64(self) -> str:
        """The key in base64 (the form of ``RAG_MASTER_KEY`` and of a key file)."""
        return base64.b64encode(self._key).decode()

    @property
    def key_id(self) -> str:
        """``local:`` + 16 hex characters derived from the key (not the key: a GCM tag of an
        empty message under it)."""
        return self._id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag as exc:
            raise SealedDataError(f"data key does not unwrap under {self.key_id}") from exc


class AwsKmsMasterKey:
    """An AWS KMS key (or a KMS-compatible server): KMS ``Encrypt``/``Decrypt`` of the data key
    with the context as ``EncryptionContext``; the master key never leaves KMS.

    Args:
        kms_key_id: key id, ARN or alias.
        endpoint_url: a KMS-compatible endpoint; None: AWS's (region and credentials from the
            usual boto3 chain).
    """

    def __init__(self, kms_key_id: str, endpoint_url: str | None = None) -> None:
        import boto3

        self.kms_key_id = kms_key_id
        self._client = boto3.client("kms", endpoint_url=endpoint_url)

    @property
    def key_id(self) -> str:
        return f"kms:{self.kms_key_id}"

    def _context(self, context: bytes) -> dict[str, str]:
        return {"rag-data-key": context.decode()}

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        out = self._client.encrypt(
            KeyId=self.kms_key_id, Plaintext=data_key, EncryptionContext=self._context(context)
        )
        return bytes(out["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            out = self._client.decrypt(
                KeyId=self.kms_key_id,
                CiphertextBlob=wrapped,
                EncryptionContext=self._context(context),
            )
        except Exception as exc:  # botocore's InvalidCiphertextException and friends
            raise SealedDataError(f"KMS refused to unwrap a data key: {exc}") from exc
        return bytes(out["Plaintext"])


_generated_logged: set[Path] = set()


def read_or_create_key_file(path: Path) -> LocalMasterKey:
    """The master key in ``path``; a new random one written there (mode 0600, exclusive create,
    so concurrent processes agree on one) when the file does not exist.

    Raises:
        ValueError: the file does not hold base64 of 32 bytes.
    """
    try:
        return LocalMasterKey.from_base64(path.read_text())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, text = LocalMasterKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return LocalMasterKey.from_base64(path.read_text())
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    if path not in _generated_logged:
        _generated_logged.add(path)
        log.warning(
            "generated a new master key in %s (%s): back it up; without it the encrypted "
            "caches and text columns cannot be read",
            path,
            key.key_id,
        )
    return key


def next_key_file(path: Path) -> Path:
    """Where a master-key rotation stages the new key (``master.key.next``)."""
    return path.with_name(path.name + ".next")


def master_keys_from_settings(settings: Settings) -> list[MasterKey]:
    """The configured master key first, then keys that may still wrap rows (a rotation's staged
    key file). With ``RAG_ENCRYPTION_AT_REST`` off the key file is not generated (only an
    existing one is read, so data sealed earlier stays readable): empty when there is none.

    Order of precedence: ``RAG_KMS_KEY_ID``, ``RAG_MASTER_KEY``, the key file.
    """
    if settings.kms_key_id:
        return [AwsKmsMasterKey(settings.kms_key_id, settings.kms_endpoint_url)]
    if settings.master_key is not None:
        return [LocalMasterKey.from_base64(settings.master_key.get_secret_value())]
    path = settings.resolved_master_key_file
    if not settings.encryption_at_rest and not path.exists():
        return []
    keys: list[MasterKey] = [read_or_create_key_file(path)]
    staged = next_key_file(path)
    if staged.exists():
        keys.append(LocalMasterKey.from_base64(staged.read_text()))
    return keys


def _write_key_file(path: Path, key: LocalMasterKey) -> None:
    """Writes ``key`` to ``path`` (mode 0600, fsync'ed), replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.to_base64() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rotate_master_key(
    settings: Settings, keyring: Keyring, new: MasterKey | None = None
) -> dict[str, object]:
    """Re-wraps every data key under a new master key; no sealed data is read or rewritten.

    With the key file (neither ``RAG_KMS_KEY_ID`` nor ``RAG_MASTER_KEY`` set) the new key
    (default: generated) is staged in ``master.key.next`` (0600) before the re-wrap and moved
    onto ``master.key`` after its commit; a crash in between leaves both files, and both are
    read (:func:`master_keys_from_settings`) until the next rotation. With ``RAG_MASTER_KEY`` or
    KMS, ``new`` is required and the operator switches the setting to it afterwards.

    Args:
        settings: the platform settings (where the key file is).
        keyring: the store's keyring, holding the current master key(s).
        new: the new master key; None: generate one (key-file mode only).

    Returns:
        The rotation's summary: ``rewrapped``, ``tenants``, ``from`` and ``to`` key ids, and
        ``master_key_file`` or ``action`` (what the operator must set now).

    Raises:
        ValueError: no new key given outside key-file mode, or the new key is the current one.
        SealedDataError: a data key does not unwrap under the configured master keys (nothing
            changed).
    """
    if not keyring.masters:
        raise ValueError("no master key is configured (RAG_ENCRYPTION_AT_REST=false)")
    file_mode = not settings.kms_key_id and settings.master_key is None
    if new is None and not file_mode:
        raise ValueError(
            "RAG_MASTER_KEY or RAG_KMS_KEY_ID is set: give the new master key "
            "(--new-key-file or --new-kms-key-id), then set it in place of the old one"
        )
    path = settings.resolved_master_key_file
    staged: Path | None = None
    if file_mode and (new is None or isinstance(new, LocalMasterKey)):
        staged = next_key_file(path)
        if new is None:
            new = read_or_create_key_file(staged)  # an interrupted rotation's key is reused
        else:
            _write_key_file(staged, new)
    assert new is not None
    if new.key_id == keyring.masters[0].key_id and len(keyring.masters) == 1:
        raise ValueError(f"the new master key is the current one ({new.key_id})")
    summary = keyring.rotate_master(new)
    if staged is not None:
        os.replace(staged, path)
        summary["master_key_file"] = str(path)
    elif isinstance(new, AwsKmsMasterKey):
        summary["action"] = f"set RAG_KMS_KEY_ID={new.kms_key_id}"
    else:
        summary["action"] = "set RAG_MASTER_KEY to the new key"
    return summary


# ------------------------------------------------------------------------------------------
# data keys
# ------------------------------------------------------------------------------------------


@dataclass
class DataKey:
    """One row of ``data_keys``: a tenant's data key, wrapped (None once destroyed)."""

    tenant: str
    version: int
    wrapped: str | None
    master_key_id: str
    created_at: datetime
    destroyed_at: datetime | None = None


class DataKeyStore(Protocol):
    """The ``data_keys`` table (:class:`rag_platform.lib.store.data_keys.DataKeyRepository`)."""

    def get(self, tenant: str, version: int) -> DataKey | None: ...

    def latest(self, tenant: str) -> DataKey | None: ...

    def insert(self, key: DataKey) -> bool: ...

    def wrapped_keys(self) -> list[DataKey]: ...

    def rewrap(self, keys: list[DataKey]) -> int: ...

    def destroy(self, tenant: str) -> int: ...


def _wrap_context(tenant: str, version: int) -> bytes:
    return f"rag-platform/data-key/v1|{tenant}|{version}".encode()


def _aad(tenant: str, purpose: str, version: int) -> bytes:
    return f"rag-platform/sealed/v1|{tenant}|{purpose}|{version}".encode()


class Keyring:
    """The tenants' data keys: created on first use, unwrapped through the master key, cached.

    Args:
        keys: the ``data_keys`` table.
        masters: the configured master key first, then keys that may still wrap rows; empty:
            nothing is sealed and sealed data fails to open.
        seal: whether new data is sealed (``RAG_ENCRYPTION_AT_REST``); off, data sealed
            earlier still opens with ``masters``.
        cache_size: most unwrapped keys held in memory (least recently used dropped first).
        cache_seconds: how long an unwrapped key is trusted before the table is read again, so
            a data key destroyed by another process stops opening blobs within this time.
    """

    def __init__(
        self,
        keys: DataKeyStore,
        masters: list[MasterKey],
        cache_size: int = 1024,
        cache_seconds: float = 60.0,
        seal: bool = True,
    ) -> None:
        self._keys = keys
        self.masters = list(masters)
        self.seal = seal
        self._cache: OrderedDict[tuple[str, int], tuple[float, AESGCM]] = OrderedDict()
        self._current: dict[str, int] = {}
        self._size = cache_size
        self._ttl = cache_seconds
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether new data is sealed (a master key is configured and sealing is on)."""
        return bool(self.masters) and self.seal

    def cipher(self, tenant: str) -> TenantCipher:
        """The tenant's cipher (seals nothing when encryption is disabled; still opens)."""
        return TenantCipher(tenant, self)

    # -- keys --------------------------------------------------------------------------

    def _remember(self, tenant: str, version: int, aead: AESGCM) -> None:
        with self._lock:
            self._cache[(tenant, version)] = (time.monotonic(), aead)
            self._cache.move_to_end((tenant, version))
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)

    def _cached(self, tenant: str, version: int) -> AESGCM | None:
        with self._lock:
            hit = self._cache.get((tenant, version))
            if hit is None or time.monotonic() - hit[0] > self._ttl:
                return None
            self._cache.move_to_end((tenant, version))
            return hit[1]

    def _master(self, key_id: str) -> MasterKey:
        for master in self.masters:
            if master.key_id == key_id:
                return master
        raise SealedDataError(
            f"a data key is wrapped by master key {key_id}, which is not configured "
            f"(configured: {', '.join(m.key_id for m in self.masters) or 'none'})"
        )

    def _unwrap(self, row: DataKey) -> AESGCM:
        if row.wrapped is None:
            raise KeyDestroyedError(
                f"data key {row.version} of tenant {row.tenant!r} was destroyed at "
                f"{row.destroyed_at}: data sealed under it is unreadable"
            )
        context = _wrap_context(row.tenant, row.version)
        key = self._master(row.master_key_id).unwrap(base64.b64decode(row.wrapped), context)
        return AESGCM(key)

    def key(self, tenant: str, version: int) -> AESGCM:
        """The tenant's data key ``version`` (to open blobs sealed under it).

        Raises:
            KeyDestroyedError: the key was destroyed.
            SealedDataError: no such key, or its master key is not configured.
        """
        aead = self._cached(tenant, version)
        if aead is not None:
            return aead
        row = self._keys.get(tenant, version)
        if row is None:
            raise SealedDataError(f"tenant {tenant!r} has no data key {version}")
        aead = self._unwrap(row)
        self._remember(tenant, version, aead)
        return aead

    def current(self, tenant: str) -> tuple[int, AESGCM]:
        """The tenant's live data key (version, key), created on first use: a destroyed key is
        never reused, a new version replaces it.

        Raises:
            SealedDataError: no master key, or the master key cannot unwrap the key.
        """
        if not self.masters:
            raise SealedDataError("no master key is configured")
        version = self._current.get(tenant)
        if version is not None:
            aead = self._cached(tenant, version)
            if aead is not None:
                return version, aead
        for _ in range(3):
            row = self._keys.latest(tenant)
            if row is not None and row.wrapped is not None:
                aead = self._unwrap(row)
                self._remember(tenant, row.version, aead)
                self._current[tenant] = row.version
                return row.version, aead
            version = row.version + 1 if row is not None else 1
            raw = os.urandom(KEY_BYTES)
            master = self.masters[0]
            new = DataKey(
                tenant=tenant,
                version=version,
                wrapped=base64.b64encode(master.wrap(raw, _wrap_context(tenant, version))).decode(),
                master_key_id=master.key_id,
                created_at=datetime.now(UTC),
            )
            if self._keys.insert(new):  # False: another process created this version first
                log.info("created data key %d of tenant %s", version, tenant)
        raise SealedDataError(f"could not create a data key for tenant {tenant!r}")

    def rotate_master(self, new: MasterKey) -> dict[str, object]:
        """Re-wraps every live data key under ``new`` in one transaction; sealed data is not
        touched (it is sealed by the data keys, which do not change). ``new`` becomes the
        configured master key of this keyring.

        Returns:
            ``{"rewrapped": n, "tenants": [...], "from": [old key ids], "to": new key id}``.

        Raises:
            SealedDataError: a data key cannot be unwrapped by the configured master keys
                (nothing is changed).
        """
        rows = self._keys.wrapped_keys()
        out: list[DataKey] = []
        for row in rows:
            context = _wrap_context(row.tenant, row.version)
            assert row.wrapped is not None
            raw = self._master(row.master_key_id).unwrap(base64.b64decode(row.wrapped), context)
            wrapped = base64.b64encode(new.wrap(raw, context)).decode()
            out.append(DataKey(row.tenant, row.version, wrapped, new.key_id, row.created_at, None))
        changed = self._keys.rewrap(out)
        olds = sorted({r.master_key_id for r in rows})
        self.masters = [new]
        with self._lock:
            self._cache.clear()
        return {
            "rewrapped": changed,
            "tenants": sorted({r.tenant for r in rows}),
            "from": olds,
            "to": new.key_id,
        }

    def destroy(self, tenant: str) -> int:
        """Destroys every data key of ``tenant`` (crypto-shredding): the wrapped keys are
        erased from the table and the cache, so nothing sealed under them opens again.

        Returns:
            Keys destroyed.
        """
        count = self._keys.destroy(tenant)
        with self._lock:
            for k in [k for k in self._cache if k[0] == tenant]:
                del self._cache[k]
            self._current.pop(tenant, None)
        return count

    # -- the generic API -----------------------------------------------------------------

    def seal_text(self, tenant: str, text: str, purpose: str) -> str:
        """``text`` sealed for ``tenant`` and ``purpose`` (unchanged when disabled)."""
        return self.cipher(tenant).seal_text(text, purpose)

    def open_text(self, tenant: str, text: str, purpose: str) -> str:
        """The plaintext of sealed ``text`` (plain text is returned as it is).

        Raises:
            SealedDataError: see :meth:`TenantCipher.open`.
        """
        return TenantCipher(tenant, self).open_text(text, purpose)


class TenantCipher:
    """Seals and opens one tenant's data. ``keyring`` None: seals nothing (plaintext mode);
    opening a sealed blob then raises :class:`SealedDataError`.

    Args:
        tenant: tenant id (bound into every blob's associated data).
        keyring: the keyring, or None.
    """

    def __init__(self, tenant: str, keyring: Keyring | None) -> None:
        self.tenant = tenant
        self.keyring = keyring

    @property
    def enabled(self) -> bool:
        return self.keyring is not None and self.keyring.enabled

    def seal(self, data: bytes, purpose: str) -> bytes:
        """``data`` sealed under the tenant's live data key (``data`` itself when disabled)."""
        if self.keyring is None or not self.keyring.enabled:
            return data
        version, aead = self.keyring.current(self.tenant)
        nonce = os.urandom(NONCE_BYTES)
        body = aead.encrypt(nonce, data, _aad(self.tenant, purpose, version))
        return _HEADER.pack(MAGIC, version, nonce) + body

    def open(self, blob: bytes, purpose: str) -> bytes:
        """The plaintext of a sealed blob; data without the header is returned as it is.

        Raises:
            KeyDestroyedError: its data key was destroyed.
            SealedDataError: sealed for another tenant or purpose, tampered, truncated, an
                unknown key, or no keyring to open it with.
        """
        if not is_sealed(blob):
            return blob
        if self.keyring is None:
            raise SealedDataError(
                f"sealed data of tenant {self.tenant!r} ({purpose}) and no keyring to open it"
            )
        if len(blob) < OVERHEAD:
            raise SealedDataError(f"truncated sealed data of tenant {self.tenant!r}")
        _, version, nonce = _HEADER.unpack_from(blob)
        aead = self.keyring.key(self.tenant, version)
        try:
            return aead.decrypt(nonce, blob[_HEADER.size :], _aad(self.tenant, purpose, version))
        except InvalidTag as exc:
            raise SealedDataError(
                f"sealed data does not open as tenant {self.tenant!r} ({purpose}, key "
                f"{version}): tampered, or sealed for another tenant or purpose"
            ) from exc

    def seal_text(self, text: str, purpose: str) -> str:
        """``text`` sealed, as :data:`TEXT_PREFIX` + base64 (``text`` itself when disabled)."""
        if not self.enabled:
            return text
        return TEXT_PREFIX + base64.b64encode(self.seal(text.encode(), purpose)).decode()

    def open_text(self, text: str, purpose: str) -> str:
        """The plaintext of sealed text; plain text is returned as it is.

        Raises:
            SealedDataError: see :meth:`open`; also for a prefix without valid base64.
        """
        if not is_sealed_text(text):
            return text
        try:
            blob = base64.b64decode(text[len(TEXT_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SealedDataError(f"malformed sealed text of tenant {self.tenant!r}") from exc
        if not is_sealed(blob):
            raise SealedDataError(f"malformed sealed text of tenant {self.tenant!r}")
        return self.open(blob, purpose).decode()

    # -- files -------------------------------------------------------------------------

    def read_file(self, path: Path, purpose: str) -> bytes:
        """A whole file's plaintext (sealed or, written before encryption, plain).

        Raises:
            OSError: the file cannot be read.
            SealedDataError: see :meth:`open`.
        """
        return self.open(path.read_bytes(), purpose)

    def write_file(self, path: Path, data: bytes, purpose: str) -> None:
        """Writes ``data`` sealed, atomically (:func:`rag_platform.lib.cache.atomic_write`)."""
        from rag_platform.lib.cache import atomic_write

        sealed = self.seal(data, purpose)
        atomic_write(path, lambda p: p.write_bytes(sealed))


#: Purposes (bound into the associated data).
PURPOSE_CACHE = "cache"
PURPOSE_SYNC = "sync"
PURPOSE_SYNC_STATE = "sync-state"
PURPOSE_ASSET = "asset"
PURPOSE_QUERY_LOG = "query_log"
PURPOSE_FEEDBACK = "feedback"

#: The plaintext-mode cipher of components built without one (tests, tools): seals nothing.
NO_CIPHER = TenantCipher("", None)

"""Reading the platform's files as they lie on disk, or through a tenant's cipher: the tests
that prove no plaintext is at rest, and those that prove a text is (or is no longer) stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from rag_platform.lib.crypto import (
    PURPOSE_ASSET,
    PURPOSE_CACHE,
    PURPOSE_SYNC,
    PURPOSE_SYNC_STATE,
    TenantCipher,
    is_sealed,
    is_sealed_text,
)
from rag_platform.settings import Settings

_PURPOSES = (PURPOSE_ASSET, PURPOSE_CACHE, PURPOSE_SYNC, PURPOSE_SYNC_STATE)


def _open_blob(cipher: TenantCipher, data: bytes) -> bytes:
    """Opens a sealed blob under whichever of the platform's file purposes it was sealed for."""
    for purpose in _PURPOSES[:-1]:
        try:
            return cipher.open(data, purpose)
        except Exception:  # noqa: BLE001 - another purpose; the last one raises
            continue
    return cipher.open(data, _PURPOSES[-1])


def _open_cell(cipher: TenantCipher, value: object) -> object:
    if isinstance(value, bytes) and is_sealed(value):
        return _open_blob(cipher, value).decode("utf-8", "replace")
    if isinstance(value, str) and is_sealed_text(value):
        for purpose in (PURPOSE_CACHE, PURPOSE_SYNC):
            try:
                return cipher.open_text(value, purpose)
            except Exception:  # noqa: BLE001 - the other purpose
                continue
    return value


def file_text(path: Path, cipher: TenantCipher | None = None) -> str:
    """A file's text: Parquet frames as JSON, other files decoded as UTF-8. With ``cipher``,
    sealed files and sealed cells are opened first; without, it is what lies on disk."""
    data = path.read_bytes()
    if cipher is not None and is_sealed(data):
        data = _open_blob(cipher, data)
    if data[:4] == b"PAR1":
        frame = pd.read_parquet(io.BytesIO(data))
        if cipher is not None:
            frame = frame.map(lambda v: _open_cell(cipher, v))
        frame = frame.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
        return frame.to_json(default_handler=str)
    return data.decode("utf-8", "replace")


def files_mentioning(root: Path, needle: str, cipher: TenantCipher | None = None) -> list[str]:
    """Files under ``root`` (relative paths) whose :func:`file_text` holds ``needle``."""
    return [
        str(path.relative_to(root))
        for path in sorted(p for p in root.rglob("*") if p.is_file())
        if needle in file_text(path, cipher)
    ]


def stored_asset(settings: Settings, asset: str, tenant: str) -> Any:
    """The value of a stored asset partition, opened through the tenant's cipher and decoded
    as the IO manager does (:func:`rag_platform.defs.resources.decode_asset`)."""
    from rag_platform.defs.resources import decode_asset
    from rag_platform.lib.store import MetadataStore

    store = MetadataStore.from_settings(settings)
    try:
        path = settings.storage_dir / asset / tenant
        return decode_asset(store.keyring.cipher(tenant).open(path.read_bytes(), PURPOSE_ASSET))
    finally:
        store.dispose()

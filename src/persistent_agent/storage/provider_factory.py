"""Config and factory for the SQLCipher provider, and the profile that selects it.

The runtime loads every ``naylence.StorageProviderFactory`` entry point before
it resolves a storage profile, so importing this module is what makes
``FAME_STORAGE_PROFILE=encrypted-sqlite`` mean SQLCipher: the built-in profile
is re-registered (``allow_override``) to point at our factory. ``sqlite`` and
``memory`` are left as the runtime defines them.
"""

from __future__ import annotations

from typing import Any, Literal

from naylence.fame.factory import Expressions
from naylence.fame.profile import RegisterProfileOptions, register_profile
from naylence.fame.storage import storage_profile_factory as _builtin_profiles
from naylence.fame.storage.storage_provider import StorageProvider
from naylence.fame.storage.storage_provider_factory import (
    StorageProviderConfig,
    StorageProviderFactory,
)
from pydantic import Field, SecretStr

PROVIDER_TYPE = "SQLCipherStorageProvider"
PROFILE_NAME = _builtin_profiles.PROFILE_NAME_ENCRYPTED_SQLITE
PROFILE_BASE_TYPE = _builtin_profiles.STORAGE_PROVIDER_FACTORY_BASE_TYPE

ENCRYPTED_SQLITE_PROFILE: dict[str, Any] = {
    "type": PROVIDER_TYPE,
    "db_directory": Expressions.env(
        _builtin_profiles.ENV_VAR_STORAGE_DB_DIRECTORY, "./data/sqlite"
    ),
    # An empty default lets the factory say "not set" in its own words instead
    # of failing inside expression evaluation.
    "master_key": Expressions.env(_builtin_profiles.ENV_VAR_STORAGE_MASTER_KEY, ""),
}


class SQLCipherStorageProviderConfig(StorageProviderConfig):
    """Where the encrypted databases live and which key opens them."""

    type: str = PROVIDER_TYPE

    db_directory: str = Field(
        default="./data/sqlite",
        description="Directory holding one <namespace>_encrypted_value.db per namespace",
    )
    master_key: SecretStr = Field(
        default=SecretStr(""),
        description="256-bit master key as 64 hex characters; per-database keys derive from it",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="SQLite synchronous mode in WAL: NORMAL survives process crashes, "
        "FULL also the last commits on power loss",
    )


class SQLCipherStorageProviderFactory(StorageProviderFactory):
    """Builds :class:`SQLCipherStorageProvider`; the provider module loads lazily."""

    async def create(
        self,
        config: SQLCipherStorageProviderConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> StorageProvider:
        settings = (
            config
            if isinstance(config, SQLCipherStorageProviderConfig)
            else SQLCipherStorageProviderConfig.model_validate(config or {})
        )

        from pathlib import Path

        from persistent_agent.keys.master_key import parse_master_key
        from persistent_agent.storage.provider import SQLCipherStorageProvider

        return SQLCipherStorageProvider(
            Path(settings.db_directory),
            parse_master_key(settings.master_key.get_secret_value()),
            synchronous=settings.synchronous,
        )


def register_encrypted_sqlite_profile() -> None:
    """Point the ``encrypted-sqlite`` storage profile at SQLCipher (idempotent)."""
    register_profile(
        PROFILE_BASE_TYPE,
        PROFILE_NAME,
        ENCRYPTED_SQLITE_PROFILE,
        RegisterProfileOptions(allow_override=True, source="persistent-agent"),
    )


register_encrypted_sqlite_profile()

"""Config and factory for the SQLCipher provider, and the profile that selects it.

The runtime loads every ``naylence.StorageProviderFactory`` entry point before
it resolves a storage profile, so importing this module is what makes
``FAME_STORAGE_PROFILE=encrypted-sqlite`` mean SQLCipher: the built-in profile
is re-registered (``allow_override``) to point at our factory. ``sqlite`` and
``memory`` are left as the runtime defines them.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from naylence.fame.factory import Expressions
from naylence.fame.profile import RegisterProfileOptions, register_profile
from naylence.fame.storage import storage_profile_factory as _builtin_profiles
from naylence.fame.storage.storage_provider import StorageProvider
from naylence.fame.storage.storage_provider_factory import (
    StorageProviderConfig,
    StorageProviderFactory,
)
from pydantic import Field, SecretStr

from persistent_agent.keys.custody import SETTINGS
from persistent_agent.settings import SHARED_STATE_PROFILE
from persistent_agent.storage.registry import BACKENDS


def _field(setting: str) -> str:
    """The config field of a key setting: FAME_STORAGE_MASTER_KEY_FILE -> master_key_file."""
    return setting.removeprefix("FAME_STORAGE_").lower()


PROVIDER_TYPE = "SQLCipherStorageProvider"
PROFILE_NAME = _builtin_profiles.PROFILE_NAME_ENCRYPTED_SQLITE
PROFILE_BASE_TYPE = _builtin_profiles.STORAGE_PROVIDER_FACTORY_BASE_TYPE

ENCRYPTED_SQLITE_PROFILE: dict[str, Any] = {
    "type": PROVIDER_TYPE,
    "db_directory": Expressions.env(
        _builtin_profiles.ENV_VAR_STORAGE_DB_DIRECTORY, "./data/sqlite"
    ),
    # Where the key comes from (keys/custody.py). Empty defaults let the
    # factory say "not set" in its own words instead of failing inside
    # expression evaluation.
    **{_field(name): Expressions.env(name, "") for name in SETTINGS},
}

SHARED_PROVIDER_TYPE = "SharedStateStorageProvider"
SHARED_PROFILE_NAME = SHARED_STATE_PROFILE


def backend_profile(name: str) -> dict[str, Any]:
    """The runtime storage profile of registered backend *name* (``storage.registry``):
    the node's own files as ``encrypted-sqlite`` has them, plus the backend's settings."""
    entry = BACKENDS[name]
    return {
        **ENCRYPTED_SQLITE_PROFILE,
        "type": SHARED_PROVIDER_TYPE,
        "backend": name,
        **{_field(setting): Expressions.env(setting, "") for setting in entry.names()},
    }


ENCRYPTED_POSTGRES_PROFILE: dict[str, Any] = backend_profile(SHARED_PROFILE_NAME)


class SQLCipherStorageProviderConfig(StorageProviderConfig):
    """Where the encrypted databases live and which key opens them."""

    type: str = PROVIDER_TYPE

    db_directory: str = Field(
        default="./data/sqlite",
        description="Directory holding one <namespace>_encrypted_value.db per namespace",
    )
    # Where the key comes from: FAME_STORAGE_MASTER_KEY or its _FILE, or a key
    # service (keys/custody.py); one field per setting, named by _field().
    master_key: SecretStr = SecretStr("")
    master_key_file: str = ""
    key_service: str = ""
    transit_key: str = ""
    vault_addr: str = ""
    vault_cacert: str = ""
    vault_token_file: str = ""
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="SQLite synchronous mode in WAL: NORMAL survives process crashes, "
        "FULL also the last commits on power loss",
    )


ConfigT = TypeVar("ConfigT", bound=StorageProviderConfig)


def _validated(
    model: type[ConfigT], config: StorageProviderConfig | dict[str, Any] | None
) -> ConfigT:
    """*config* as a *model*: as it is when it already is one, else validated from a dict."""
    if isinstance(config, model):
        return config
    validated: ConfigT = model.model_validate(config or {})
    return validated


class SQLCipherStorageProviderFactory(StorageProviderFactory):
    """Builds :class:`SQLCipherStorageProvider`; the provider module loads lazily."""

    async def create(
        self,
        config: SQLCipherStorageProviderConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> StorageProvider:
        settings = _validated(SQLCipherStorageProviderConfig, config)

        from pathlib import Path

        from persistent_agent.keys.custody import key_source
        from persistent_agent.keys.master_key import ENV_VAR
        from persistent_agent.storage.provider import SQLCipherStorageProvider

        return SQLCipherStorageProvider(
            Path(settings.db_directory),
            key_source(
                {
                    name: (
                        settings.master_key.get_secret_value()
                        if name == ENV_VAR
                        else str(getattr(settings, _field(name)))
                    )
                    for name in SETTINGS
                }
            ),
            synchronous=settings.synchronous,
        )


class SharedStateStorageProviderConfig(SQLCipherStorageProviderConfig):
    """A node's own files (as above) plus a registered backend for the agent's state.

    *backend* is its profile name in ``storage.registry``; each of its settings
    is a field named by ``_field`` (``FAME_STORAGE_POSTGRES_DSN``:
    ``postgres_dsn``), taken as an extra field for a backend added later.
    """

    type: str = SHARED_PROVIDER_TYPE

    backend: str = SHARED_PROFILE_NAME
    postgres_dsn: str = Field(default="", description="libpq connection string, no password")
    postgres_password_file: str = Field(default="", description="file holding the password")

    def backend_settings(self) -> dict[str, str]:
        """The backend's settings by variable name, expressions evaluated."""
        from naylence.fame.factory.expression_evaluator import ExpressionEvaluator

        fields = {**self.model_dump(), **(self.model_extra or {})}
        return {
            name: str(ExpressionEvaluator.evaluate(str(fields.get(_field(name)) or "")))
            for name in BACKENDS[self.backend].names()
        }


class SharedStateStorageProviderFactory(StorageProviderFactory):
    """Builds :class:`SharedStateStorageProvider` for any registered backend's profile."""

    async def create(
        self,
        config: SharedStateStorageProviderConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> StorageProvider:
        settings = _validated(SharedStateStorageProviderConfig, config)
        from persistent_agent.storage.provider import SQLCipherStorageProvider
        from persistent_agent.storage.registry import backend_module
        from persistent_agent.storage.shared_provider import SharedStateStorageProvider

        module = backend_module(settings.backend)
        values = settings.backend_settings()
        module.check_settings(values)
        local = await SQLCipherStorageProviderFactory().create(settings)
        if not isinstance(local, SQLCipherStorageProvider):  # pragma: no cover
            raise TypeError("the SQLCipher factory made no SQLCipher provider")
        try:
            shared = await module.open_backend(values, local.key_source)
        except BaseException:
            local.close()
            raise
        return SharedStateStorageProvider(local, shared)


def register_encrypted_sqlite_profile() -> None:
    """Point the ``encrypted-sqlite`` storage profile at SQLCipher (idempotent)."""
    register_profile(
        PROFILE_BASE_TYPE,
        PROFILE_NAME,
        ENCRYPTED_SQLITE_PROFILE,
        RegisterProfileOptions(allow_override=True, source="persistent-agent"),
    )
    for name in BACKENDS:  # one profile per registered backend (storage.registry)
        register_profile(
            PROFILE_BASE_TYPE,
            name,
            backend_profile(name),
            RegisterProfileOptions(allow_override=True, source="persistent-agent"),
        )


register_encrypted_sqlite_profile()

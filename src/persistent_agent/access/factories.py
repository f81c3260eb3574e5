"""The access wing's runtime hooks: the sentinel's authorizer and the nodes' secret files.

Both are registered through the runtime's factory entry points (pyproject.toml):

- ``naylence.AuthorizerFactory``: ``RoleAuthorizer`` (access/authorizer.py), which
  the sentinel's security config names instead of the ``oauth2-gated`` profile.
- ``naylence.CredentialProviderFactory``: ``FileCredentialProvider``. The
  runtime's ``direct`` admission profile reads the client secret only from an
  environment variable (``FAME_ADMISSION_CLIENT_SECRET``), which ``/proc/<pid>/environ``
  and ``docker inspect`` show. Our nodes name this provider in their admission
  config instead, so the secret is read from an owner-only file when a token
  is fetched, and a rotated secret is read at the next fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from naylence.fame.security.auth.authorizer import Authorizer
from naylence.fame.security.auth.authorizer_factory import AuthorizerConfig, AuthorizerFactory
from naylence.fame.security.credential import CredentialProvider
from naylence.fame.security.credential.credential_provider_factory import (
    CredentialProviderConfig,
    CredentialProviderFactory,
)
from pydantic import BaseModel

from persistent_agent.access.authorizer import AUTHORIZER_TYPE, RoleAuthorizer
from persistent_agent.keys.secret_files import read_private

CREDENTIAL_PROVIDER_TYPE = "FileCredentialProvider"
ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _validated(model: type[ConfigT], config: BaseModel | dict[str, Any] | None) -> ConfigT:
    """*config* (the runtime's base config, or a dict) as our *model*, extra fields kept."""
    data = config.model_dump() if isinstance(config, BaseModel) else config or {}
    return model.model_validate(data)


class RoleAuthorizerConfig(AuthorizerConfig):
    type: str = AUTHORIZER_TYPE
    issuer: str
    audience: str
    ca_file: str
    revocation_poll_seconds: float = 2.0


class RoleAuthorizerFactory(AuthorizerFactory[RoleAuthorizerConfig]):
    async def create(
        self, config: RoleAuthorizerConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> Authorizer:
        settings = _validated(RoleAuthorizerConfig, config)
        authorizer: Authorizer = RoleAuthorizer(
            issuer=settings.issuer,
            audience=settings.audience,
            ca_file=settings.ca_file,
            revocation_poll_seconds=settings.revocation_poll_seconds,
        )
        return authorizer


class FileCredentialProvider:
    """A secret read from an owner-only one-line file at each use."""

    def __init__(self, path: Path, setting: str) -> None:
        self._path = path
        self._setting = setting

    async def get(self) -> str | None:
        return read_private(self._path, self._setting)


class FileCredentialProviderConfig(CredentialProviderConfig):
    type: str = CREDENTIAL_PROVIDER_TYPE
    path: str
    # The setting that named the file, for the error line.
    setting: str = "secret file"


class FileCredentialProviderFactory(CredentialProviderFactory[FileCredentialProviderConfig]):
    async def create(
        self, config: FileCredentialProviderConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> CredentialProvider:
        settings = _validated(FileCredentialProviderConfig, config)
        return FileCredentialProvider(Path(settings.path), settings.setting)

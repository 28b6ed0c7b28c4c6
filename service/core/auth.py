"""Optional API-key auth, shared by both front doors: ``Authorization: Bearer <key>`` or ``X-API-Key``.

Two kinds of key: API keys may call everything but model management; admin keys may also load and
unload models (``/v2/repository``). No key of either kind configured: auth is off.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from service.core.errors import ErrorKind, ServiceError
from service.core.fair import ANONYMOUS, Client, header_name, key_name, priority_of


class ApiKeys:
    """The accepted keys (several, so keys can be rotated without downtime). None configured: auth off."""

    def __init__(self, keys: list[SecretStr]):
        self._keys = [k.get_secret_value().encode() for k in keys if k.get_secret_value()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str) -> bool:
        # compare_digest with every key: the time taken does not tell which key is closest
        matches = [hmac.compare_digest(presented.encode(), key) for key in self._keys]
        return any(matches)

    def check(self, authorization: str | None, api_key: str | None) -> None:
        """Raises ``unauthenticated`` unless the Authorization header (``Bearer <key>``) or the
        X-API-Key header carries an accepted key."""
        if not self.enabled:
            return
        presented = presented_key(authorization, api_key)
        if not presented:
            raise ServiceError(
                ErrorKind.unauthenticated, "this server needs an API key: send 'Authorization: Bearer <key>'"
            )
        if not self.accepts(presented):
            raise ServiceError(ErrorKind.unauthenticated, "the API key is not valid")


class Access:
    """Who may call what: ``users`` (API keys, and admin keys) everything but model management,
    ``admins`` everything."""

    def __init__(self, api_keys: list[SecretStr], admin_keys: list[SecretStr], control_api: bool = True):
        """``control_api``: model loading and unloading is allowed at all (``Settings.control_api``)."""
        self.admins = ApiKeys(admin_keys)
        self.users = ApiKeys([*api_keys, *admin_keys] if ApiKeys(api_keys).enabled else [])
        self.control_api = control_api

    def check_control(self) -> None:
        """Raises ``forbidden`` when loading and unloading models is off on this server."""
        if not self.control_api:
            raise ServiceError(
                ErrorKind.forbidden,
                "model control is off on this server: set TSM_MODEL_CONTROL=explicit (or TSM_ADMIN_API_KEYS) "
                "to load and unload models over the API",
            )

    def check_admin(self, authorization: str | None, api_key: str | None) -> None:
        if not self.admins.enabled:
            if self.users.enabled:
                raise ServiceError(
                    ErrorKind.forbidden,
                    "model management is off on this server: it has API keys but no admin keys "
                    "(set TSM_ADMIN_API_KEYS to allow it)",
                )
            return
        presented = presented_key(authorization, api_key)
        if presented and not self.admins.accepts(presented) and self.users.accepts(presented):
            raise ServiceError(ErrorKind.forbidden, "this key may classify but not manage models: use an admin key")
        self.admins.check(authorization, api_key)


class Identify:
    """Names a request's client (``service.core.fair``) from its headers or gRPC metadata (lower-case
    names): the API key it presented when keys are configured, else the trusted gateway's
    ``client_header``, else anonymous; and its priority class from ``X-Priority``."""

    def __init__(self, access: Access, client_header: str = "") -> None:
        self.access = access
        self.header = client_header.strip().lower()
        self.keyed = access.users.enabled or access.admins.enabled

    def __call__(self, headers: Mapping[str, str]) -> Client:
        priority = priority_of(headers.get("x-priority"))
        if self.keyed:
            key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
            known = key and (self.access.users.accepts(key) or self.access.admins.accepts(key))
            return Client(key_name(key) if key and known else ANONYMOUS.name, priority)
        if self.header and headers.get(self.header):
            return Client(header_name(headers[self.header]), priority)
        return Client(ANONYMOUS.name, priority)


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else api_key

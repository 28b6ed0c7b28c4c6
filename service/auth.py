"""Optional API-key auth, shared by both front doors: ``Authorization: Bearer <key>`` or ``X-API-Key``."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.errors import ErrorKind, ServiceError


class ApiKeys:
    """The accepted keys (several, so keys can be rotated without downtime). None configured: auth off."""

    def __init__(self, keys: list[SecretStr]):
        self._keys = [k.get_secret_value().encode() for k in keys if k.get_secret_value()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None, api_key: str | None) -> None:
        """Raises ``unauthenticated`` unless the Authorization header (``Bearer <key>``) or the
        X-API-Key header carries an accepted key."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else api_key
        if not presented:
            raise ServiceError(
                ErrorKind.unauthenticated, "this server needs an API key: send 'Authorization: Bearer <key>'"
            )
        # compare_digest with every key: the time taken does not tell which key is closest
        matches = [hmac.compare_digest(presented.encode(), key) for key in self._keys]
        if not any(matches):
            raise ServiceError(ErrorKind.unauthenticated, "the API key is not valid")

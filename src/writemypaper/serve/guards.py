"""What stands in front of the routes: a cap on the request body, the API key on /v1, and the check that a server
reachable from other machines has a key.

    WRITEMYPAPER_API_KEY=$(openssl rand -hex 16) writemypaper serve --model runs/demo --host 0.0.0.0
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.exceptions import HTTPException

from writemypaper.errors import UserError
from writemypaper.serve.errors import ApiError, error_response


class BodyLimit:
    """413 for a body past `max_bytes`: on its Content-Length before anything is read, or as chunks arrive."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await error_response(ApiError(413, "the request body is too large"))(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI re-raises an HTTPException met while reading the body
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)


class ApiKey:
    """401, OpenAI-shaped, for a /v1 request without `Authorization: Bearer <key>`. The page and /health stay open:
    the page must load to ask for the key, and a health check must not need a secret."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            sent = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = sent.partition(b" ")
            if not sent:
                message = "this server needs an API key: send the header 'Authorization: Bearer KEY'"
            elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = "the API key is not valid"
            else:
                return await self.app(scope, receive, send)
            response = error_response(ApiError(401, message, code="invalid_api_key"))
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def check_api_key(key: str | None) -> str | None:
    """A key must fit in an HTTP header: printable ASCII without spaces."""
    if key is None:
        return None
    if not key or not all(33 <= ord(c) <= 126 for c in key):
        raise UserError("--api-key must be non-empty printable ASCII without spaces")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere

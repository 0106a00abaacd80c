"""Request guards: body size limit, optional bearer token, compressed bodies.

* :class:`BodyLimitMiddleware` refuses a body over the limit with 413 before the app reads
  it when ``Content-Length`` says so, and stops a chunked body the moment it passes the limit.
* :func:`require_token` (a FastAPI dependency) checks ``Authorization: Bearer <token>`` when
  the service was started with a token; health probes and ``/metrics`` stay open.
* :func:`decompress` undoes ``Content-Encoding: gzip`` or ``deflate`` (what
  ``tritonclient``'s ``request_compression_algorithm`` sends) without letting the result grow
  past the same limit.

Example:
    >>> app.add_middleware(BodyLimitMiddleware, max_bytes=64 << 20)     # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import zlib

from fastapi import Request

from serving.protocol import ProtocolError

TOKEN_HINT = "send the header 'Authorization: Bearer <token>' with the server's token"


class BodyTooLargeError(ProtocolError):
    """A request body over the configured limit (HTTP 413)."""

    def __init__(self, size: int | str, limit: int) -> None:
        super().__init__(
            f"request body of {size} bytes exceeds the limit of {limit} bytes; send fewer "
            f"images per request or start the server with a larger --max-body-mb",
            status=413,
        )


class BodyLimitMiddleware:
    """ASGI middleware that caps the request body at ``max_bytes``."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Answer at once: the app never reads (or buffers) the oversized body.
            error = BodyTooLargeError(int(declared), self.max_bytes)
            body = json.dumps({"error": error.message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(f"more than {self.max_bytes}", self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def check_token(authorization: str | None, token: str) -> None:
    """Raise a 401 :class:`ProtocolError` unless ``authorization`` carries ``token``."""
    if not authorization:
        raise ProtocolError(f"missing bearer token: {TOKEN_HINT}", status=401)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ProtocolError(f"the Authorization header is not a bearer token: {TOKEN_HINT}", 401)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ProtocolError("invalid bearer token", status=401)


async def require_token(request: Request) -> None:
    """FastAPI dependency: enforce the bearer token when the app has one."""
    token = request.app.state.settings.token
    if token:
        check_token(request.headers.get("authorization"), token)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's ``Content-Encoding`` (identity, gzip or deflate), capped at ``limit``."""
    if not encoding or encoding.lower() == "identity":
        return body
    kind = encoding.lower()
    if kind not in ("gzip", "deflate"):
        raise ProtocolError(
            f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none", status=415
        )
    wbits = zlib.MAX_WBITS | 16 if kind == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {kind} request body cannot be decompressed: {exc}") from None
    if len(data) > limit:
        raise BodyTooLargeError(f"more than {limit} (decompressed)", limit)
    return data

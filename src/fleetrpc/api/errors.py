"""ThingsBoard's error answers, in its two shapes.

Most of the API answers an error with ThingsBoard's JSON object
(``ThingsboardErrorResponse``), fields in its declaration order::

    {"status": 401, "message": "Token has expired", "errorCode": 11, "timestamp": 1786108933699}

The RPC endpoints do not always use it (THINGSBOARD-NOTES.md §1.2): an unknown
device or a denied access is a **bare text** body (404 / 403), a timeout or an
offline device an **empty** body (408 / 409 in v1, 504 in v2), a reply that
is not JSON an empty 406, and an oversized request a bare JSON *string*
(413).  Handlers raise :class:`ApiError` (JSON) or return :func:`bare_text` /
:func:`empty`; :func:`answer_for` (called by the request middleware) turns
anything else into a JSON 500 and never lets an exception escape with a
stack trace in the body.
"""

from __future__ import annotations

import enum
import logging
import re
import time

import msgspec
from aiohttp import web

from ..errors import (
    AlreadyExistsError,
    BusyError,
    EntitiesLimitExceededError,
    EntityNotFoundError,
    StoreError,
    ValidationError,
)

__all__ = [
    "ApiError",
    "ErrorCode",
    "bare_text",
    "empty",
    "answer_for",
    "error_response",
    "loggable_path",
    "TOO_LARGE",
    "DEVICE_NOT_FOUND",
    "NO_PERMISSION",
    "SYSADMIN_NOT_ALLOWED",
]

log = logging.getLogger("fleetrpc.api")

#: The bare texts of ThingsBoard's access-validation path (AccessValidator).
DEVICE_NOT_FOUND = "Device with requested id wasn't found!"
NO_PERMISSION = "You don't have permission to perform this operation!"
SYSADMIN_NOT_ALLOWED = "System administrator is not allowed to perform this operation!"


class ErrorCode(enum.IntEnum):
    """ThingsBoard's ``ThingsboardErrorCode`` values (serialised as ints)."""

    GENERAL = 2
    AUTHENTICATION = 10
    JWT_TOKEN_EXPIRED = 11
    CREDENTIALS_EXPIRED = 15
    PERMISSION_DENIED = 20
    INVALID_ARGUMENTS = 30
    BAD_REQUEST_PARAMS = 31
    ITEM_NOT_FOUND = 32
    TOO_MANY_REQUESTS = 33
    VERSION_CONFLICT = 35
    ENTITIES_LIMIT_EXCEEDED = 41
    DATABASE = 46


class ErrorBody(msgspec.Struct):
    """ThingsBoard's JSON error body (also the OpenAPI schema of every error)."""

    status: int
    message: str
    errorCode: int
    timestamp: int


class EntitiesLimitBody(ErrorBody):
    """ThingsBoard's ThingsboardEntitiesLimitExceededResponse: the error
    body with the entity type and the limit reached."""

    entityType: str
    limit: int


_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    """Raised by a handler: answered as ThingsBoard's JSON error."""

    def __init__(self, status: int, message: str, code: ErrorCode, *, shape: str = "json") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        #: "json" (ThingsBoard's error object), "text" (bare text) or "empty"
        self.shape = shape

    @classmethod
    def text(cls, status: int, text: str) -> ApiError:
        """Answered as a bare text body (the RPC path's 403 / 404)."""
        return cls(status, text, ErrorCode.GENERAL, shape="text")

    # The common cases, named as ThingsBoard's exceptions are.
    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, message, ErrorCode.BAD_REQUEST_PARAMS)

    @classmethod
    def not_found(cls, message: str) -> ApiError:
        return cls(404, message, ErrorCode.ITEM_NOT_FOUND)

    @classmethod
    def forbidden(cls, message: str = NO_PERMISSION) -> ApiError:
        return cls(403, message, ErrorCode.PERMISSION_DENIED)

    @classmethod
    def unauthorized(cls, message: str = "Authentication failed",
                     code: ErrorCode = ErrorCode.AUTHENTICATION) -> ApiError:
        return cls(401, message, code)

    def response(self) -> web.Response:
        if self.shape == "text":
            return bare_text(self.status, self.message)
        if self.shape == "empty":
            return empty(self.status)
        return error_response(self.status, self.message, self.code)


def error_response(status: int, message: str, code: ErrorCode | int) -> web.Response:
    body = ErrorBody(status, message, int(code), int(time.time() * 1000))
    return web.Response(status=status, body=_encode(body), content_type="application/json")


def entities_limit_response(exc: EntitiesLimitExceededError) -> web.Response:
    """ThingsBoard's answer to EntitiesLimitExceededException
    (ThingsboardErrorResponseHandler): 403, errorCode 41."""
    body = EntitiesLimitBody(403, str(exc), int(ErrorCode.ENTITIES_LIMIT_EXCEEDED), int(time.time() * 1000),
                             exc.entity_type, exc.limit)
    return web.Response(status=403, body=_encode(body), content_type="application/json")


def bare_text(status: int, text: str) -> web.Response:
    """A text body without JSON quoting (ThingsBoard's AccessDeniedException
    and EntityNotFoundException on the RPC path)."""
    return web.Response(status=status, text=text, content_type="text/plain")


def empty(status: int) -> web.Response:
    return web.Response(status=status)


def too_large(limit: int) -> web.Response:
    """ThingsBoard's PayloadSizeFilter answer: a bare JSON string, without
    a JSON content type."""
    return web.Response(status=413, body=_encode(f"Payload size exceeds the limit of {limit} bytes"),
                        content_type="text/plain")


TOO_LARGE = too_large


_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|accessToken)=)[^&]*")


def loggable_path(path: str) -> str:
    """``path`` without the secrets some requests carry in it: ThingsBoard's
    device API has the device's access token in the path
    (``/api/v1/{token}/...``), the console's event stream a JWT in
    ``?token=`` (EventSource sets no headers); a log is read by more people
    than the token's owner.  Every path this package logs goes through it
    (the access log, :func:`answer_for`'s error log)."""
    if path.startswith("/api/v1/"):
        end = path.find("/", 8)
        path = "/api/v1/***" + (path[end:] if end > 0 else "")
    if "token=" in path or "Token=" in path:
        path = _TOKEN_IN_QUERY.sub(r"\1***", path)
    return path


def answer_for(request: web.Request, exc: Exception, limit: int) -> web.Response:
    """The answer to an exception a handler raised (the request middleware,
    ``api/middleware.py``, calls this): ApiError -> its shape; aiohttp's own
    HTTP errors under /api (404 no route, 405 wrong method, 413 body over
    the limit) -> ThingsBoard's JSON; anything unexpected -> JSON 500
    (errorCode 2), logged.  An HTTPException outside /api, or one that is
    no error (a redirect), is raised again for aiohttp to answer.

    The repositories' errors become what ThingsBoard's BaseController makes
    of its own: a bad value (ValidationError) or a taken name
    (AlreadyExistsError: "Device with such name already exists!") -> 400,
    errorCode 31; a tenant at its limit of devices
    (EntitiesLimitExceededError: "Devices limit reached") -> 403, errorCode
    41, with ``entityType`` and ``limit``; an entity that is not there (in
    the caller's tenant) -> 404, errorCode 32; too much of one kind of work
    at once (BusyError: a burst of logins) -> 429, errorCode 33, with
    ``Retry-After``; another database failure -> 500, errorCode 46."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, EntitiesLimitExceededError):
        return entities_limit_response(exc)
    if isinstance(exc, (ValidationError, AlreadyExistsError)):
        return error_response(400, str(exc), ErrorCode.BAD_REQUEST_PARAMS)
    if isinstance(exc, EntityNotFoundError):
        return error_response(404, str(exc), ErrorCode.ITEM_NOT_FOUND)
    if isinstance(exc, BusyError):
        response = error_response(429, str(exc), ErrorCode.TOO_MANY_REQUESTS)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    if isinstance(exc, StoreError):
        log.error("database error in %s %s", request.method, loggable_path(request.path), exc_info=exc)
        return error_response(500, "Database error", ErrorCode.DATABASE)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        # A body without Content-Length (chunked) that grew past the limit.
        return too_large(limit)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise exc
        code = {404: ErrorCode.ITEM_NOT_FOUND, 401: ErrorCode.AUTHENTICATION,
                403: ErrorCode.PERMISSION_DENIED}.get(exc.status, ErrorCode.BAD_REQUEST_PARAMS)
        if exc.status >= 500:
            code = ErrorCode.GENERAL
        return error_response(exc.status, exc.reason or "error", code)
    log.error("unhandled error in %s %s", request.method, loggable_path(request.path), exc_info=exc)
    return error_response(500, "Internal server error", ErrorCode.GENERAL)

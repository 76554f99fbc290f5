"""The server's logs: one line per record, as text or as JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "HttpServerLog", "configure_logging"]

# Attributes every LogRecord has; anything else came in ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class HttpServerLog(logging.LoggerAdapter):
    """aiohttp's server logger (``AppRunner(logger=...)``) with the client's
    malformed requests told apart from the server's errors.

    aiohttp answers a request it cannot parse (a header line over its 8,190
    bytes, a bad request line, an invalid header) with 400 and logs it at
    ERROR with a traceback, as it does a handler's crash.  Bad input from the
    network is not a server error: such a record becomes one line at
    ``client_level`` (INFO: it stands in for the access line these requests
    never get, as they never reach the middleware), without the traceback.
    Everything else passes unchanged.
    """

    def __init__(self, logger: logging.Logger, client_level: int = logging.INFO) -> None:
        super().__init__(logger, {})
        self.client_level = client_level

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        from aiohttp.http_exceptions import BadHttpMessage

        exc = kwargs.get("exc_info")
        if level >= logging.ERROR and isinstance(exc, BadHttpMessage):
            kwargs["exc_info"] = None
            level, msg, args = self.client_level, f"{msg}: %s", (*args, exc.message)
        super().log(level, msg, *args, **kwargs)  # type: ignore[arg-type]


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

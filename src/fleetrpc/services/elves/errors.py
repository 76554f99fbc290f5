"""Elves' error codes and the one exception every Elves handler raises.

Elves writes an error as ``[code]Message`` (``[410.1]Send Job To Agent
Fail``) in a reply's ``error`` field next to ``"flag": "false"``.  The codes
below are Elves' own (its OpenAPI's ``code.md``) plus the few fleetrpc adds
for what Elves never had to answer (malformed envelopes, unknown services).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ElvesError", "Code"]


class Code:
    """The codes, by meaning.  401.x authentication, 402.x a service or
    function that is not there, 403.x a bad argument, 41x.x a thing that was
    not found or could not be reached, 500 a bug."""

    # -- authentication (401.x, Elves' OpenAPI) --
    MISSING_AUTH = "401.1"        # no key / auth id / signature parameter
    BAD_AUTH_TYPE = "401.3"
    BAD_AUTH_LENGTH = "401.4"
    BAD_KEY = "401.5"             # unknown key, wrong key, bad signature
    DENIED = "401.6"              # authenticated, not allowed (agent IP not granted)
    TIMESTAMP_WINDOW = "401.7"
    BAD_TIMESTAMP = "401.8"
    # -- not there (402.x; Elves: "a required component is disabled") --
    UNKNOWN_SERVICE = "402.1"
    UNKNOWN_FUNCTION = "402.2"
    # -- bad argument (403.x, Elves' numbering; 403.0 is fleetrpc's) --
    MALFORMED = "403.0"           # not an envelope, or an argument without a code of its own
    BAD_IP = "403.1"
    BAD_PARAM = "403.2"
    BAD_APP = "403.3"
    BAD_MODE = "403.4"
    BAD_CRON_RULE = "403.5"
    BAD_QUEUE_ID = "403.6"
    BAD_FUNC = "403.7"
    BAD_TIMEOUT = "403.8"
    BAD_CRON_ID = "403.9"
    # -- agents, crons, queues, apps --
    SEND_FAILED = "410.1"         # the instruction did not reach the agent
    CRON_NOT_FOUND = "411.1"
    QUEUE_NOT_FOUND = "412.1"
    QUEUE_STATUS = "412.2"
    STOP_TASK = "412.3"
    DEPEND_TASK_NOT_FOUND = "412.4"
    AUTH_ID_NOT_FOUND = "413.1"
    APP_NOT_FOUND = "413.2"
    AGENT_NOT_FOUND = "414.1"
    TASK_NOT_FOUND = "415.1"      # fleetrpc: a tasklog id that is not the caller's
    INTERNAL = "500"


class ElvesError(Exception):
    """An Elves-level failure: rendered ``[code]message`` with ``flag
    "false"``.  ``fields`` are reply fields sent along (e.g. the ``info`` of
    a failed ``sendSync``, so the caller still sees ``agent_sync_error``)."""

    def __init__(self, code: str, message: str, **fields: Any) -> None:
        super().__init__(f"[{code}]{message}")
        self.code = code
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return f"[{self.code}]{self.message}"

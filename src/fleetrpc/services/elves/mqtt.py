"""Elves over MQTT: calls on ``{p}/elves/{app}/call[/{cid}]``, answers on
``{p}/elves/{app}/back[/{cid}]`` or on the call's MQTT 5 Response Topic.

The dispatcher subscribes to ``{p}/elves/+/call/#`` (shared between the
nodes of a share group) and hands each ELVES message to the hook installed
here with ``dispatcher.on_kind(Kind.ELVES, ...)``.  A Response Topic is
honoured only inside the calling app's own answer topics
(``{p}/elves/{app}/back...``): an app cannot make the server publish on
another app's topics, a device's topics, or a call topic (which would feed
the answer back in as a call).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import msgspec

from ...wire import ELVES_BACK, ELVES_CALL, elves_topic
from .envelope import error_envelope
from .errors import Code, ElvesError
from .router import ElvesCall, ElvesRouter

__all__ = ["ElvesMqtt", "answer_topic"]

log = logging.getLogger("fleetrpc.elves.mqtt")


def answer_topic(prefix: str, app: str, rest: str | None, properties: dict | None) -> tuple[str, dict | None]:
    """Where to answer a call that came on ``{prefix}/elves/{app}/{rest}``:
    the Response Topic (with its Correlation Data) when it is one of the
    app's answer topics, else ``back`` in place of ``call`` in the call's
    own topic."""
    base = elves_topic(prefix, app, ELVES_BACK)
    if properties:
        rt = properties.get("response_topic")
        if rt and isinstance(rt[0], str) and (rt[0] == base or rt[0].startswith(base + "/")):
            cd = properties.get("correlation_data")
            return rt[0], ({"correlation_data": cd[0]} if cd else None)
    if rest and rest.startswith(ELVES_CALL + "/"):
        return base + rest[len(ELVES_CALL):], None
    return base, None


class ElvesMqtt:
    """Binds an :class:`ElvesRouter` to a dispatcher's ELVES messages."""

    def __init__(self, dispatcher: Any, router: ElvesRouter, *, make_call: Callable[[str], ElvesCall] | None = None) -> None:
        self.dispatcher = dispatcher
        self.router = router
        self.prefix = dispatcher.settings.prefix
        self.qos = dispatcher.settings.qos
        self._make_call = make_call or (lambda app: ElvesCall(via="mqtt", topic_app=app))
        self._encode = msgspec.json.Encoder().encode
        self.answered = 0

    def attach(self) -> None:
        from ..._core.constants import Kind

        self.dispatcher.on_kind(Kind.ELVES, self._on_message)

    def _publish(self, topic: str, payload: bytes, props: dict | None) -> None:
        self.dispatcher.publish(topic, payload, qos=self.qos, properties=props)

    async def _on_message(self, msg: Any, properties: dict | None) -> None:
        app, rest = msg.device, msg.node
        topic, props = answer_topic(self.prefix, app, rest, properties)
        error = getattr(msg, "error", None)
        if error is not None or msg.body is None:
            reply = error_envelope(ElvesError(Code.MALFORMED, f"Malformed Envelope: {error or 'no body'}"))
        else:
            reply = await self.router.dispatch(msg.body, self._make_call(app))
        try:
            payload = self._encode(reply)
        except (TypeError, msgspec.EncodeError) as exc:
            log.error("Elves reply is not JSON-serialisable: %s", exc)
            payload = self._encode(error_envelope(ElvesError(Code.INTERNAL, "Internal Error: reply not serialisable")))
        self.answered += 1
        self._publish(topic, payload, props)

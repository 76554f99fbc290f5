"""The Elves router: (service, function) -> handler, with the seed's aliases.

    router = ElvesRouter()
    router.register("scheduler", "sendSync", send_sync, aliases=["syncjob"])
    router.register("scheduler", "sendAsync", send_async,
                    aliases=[Alias("sendsync", when=wants_async)])
    reply = await router.dispatch(body, call)      # always a reply, never raises

A handler is ``async def handler(envelope, call) -> dict`` returning the
reply's own fields; the router wraps them in ``{"mqt": "back", "mqs",
"mqf", "flag": "true", "error": "", ...}``.  It raises :class:`ElvesError`
for an Elves-level failure (``flag "false"``, ``error "[code]Message"``).
Anything else it raises is a bug: logged, and answered ``[500]``.

Resolution: the written service goes through :data:`SERVICE_ALIASES` and
lower case; the written function is matched case-insensitively against each
function's own name and its aliases.  When one written name stands for
several functions (the seed writes ``sendsync`` for ``sendAsync`` too), the
aliases carry a predicate over the envelope (``when=``) and the first whose
predicate holds wins; the one registration without a predicate is the
fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from ...errors import ValueRefusedError
from .envelope import Envelope, check_storable, error_envelope, parse_envelope, reply_envelope
from .errors import Code, ElvesError

__all__ = ["Alias", "ElvesCall", "ElvesRouter", "Handler"]

log = logging.getLogger("fleetrpc.elves")

#: The null UUID: "no tenant" (library mode, and ThingsBoard's convention).
NULL_TENANT = "13814000-1dd2-11b2-8080-808080808080"


@dataclass(slots=True)
class ElvesCall:
    """Who is calling and how: what a handler may rely on.

    ``tenant_id`` scopes every lookup (agents, app keys, tasks); ``caller``
    is the authenticated app (:class:`~.supervisor.AppKey`), or ``None`` over
    HTTP when the envelope names no app (a tenant admin reading state);
    ``principal`` the HTTP principal; ``via`` ``"mqtt"`` or ``"http"``;
    ``topic_app`` the ``{app}`` level of the MQTT topic."""

    tenant_id: str = NULL_TENANT
    caller: Any = None
    principal: Any = None
    via: str = "mqtt"
    topic_app: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Envelope, ElvesCall], Awaitable[dict[str, Any] | None]]
Predicate = Callable[[Envelope], bool]


@dataclass(frozen=True, slots=True)
class Alias:
    """Another written name of a function; with ``when``, only for the
    envelopes it holds for (dispatch on the arguments present)."""

    name: str
    when: Predicate | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    function: str
    handler: Handler
    when: Predicate | None


class ElvesRouter:
    """Routes parsed envelopes to handlers; see the module docstring."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], list[_Route]] = {}
        self._functions: dict[str, dict[str, Handler]] = {}
        self._before: list[Callable[[Envelope, ElvesCall], Awaitable[None]]] = []

    # -- registration -------------------------------------------------------

    def register(
        self,
        service: str,
        function: str,
        handler: Handler,
        *,
        aliases: Iterable[str | Alias] = (),
    ) -> None:
        """Serve ``service.function`` (names as documented; matching is
        case-insensitive) with ``handler``.  ``aliases`` are other written
        names: plain strings always mean this function, :class:`Alias` with
        ``when`` only when its predicate holds.  Two unconditional meanings
        of one written name are a ValueError."""
        service = service.lower()
        self._functions.setdefault(service, {})[function] = handler
        names: list[Alias] = [Alias(function)]
        names += [a if isinstance(a, Alias) else Alias(a) for a in aliases]
        for alias in names:
            key = (service, alias.name.lower())
            routes = self._routes.setdefault(key, [])
            route = _Route(function, handler, alias.when)
            if alias.when is None:
                fallback = [r for r in routes if r.when is None]
                if fallback and fallback[0].function != function:
                    raise ValueError(
                        f"{service}.{alias.name} already means {fallback[0].function}; "
                        f"give the alias of {function} a predicate (when=...)"
                    )
                if fallback:
                    continue
                routes.append(route)
            else:
                # Predicated meanings are tried first, in registration order.
                n = sum(1 for r in routes if r.when is not None)
                routes.insert(n, route)

    def before(self, hook: Callable[[Envelope, ElvesCall], Awaitable[None]]) -> None:
        """Run ``await hook(envelope, call)`` after resolution and before
        every handler (authentication); an ElvesError it raises is the reply."""
        self._before.append(hook)

    @property
    def services(self) -> dict[str, list[str]]:
        """Each service's functions, as documented."""
        return {s: sorted(f) for s, f in self._functions.items()}

    # -- dispatch -----------------------------------------------------------

    def resolve(self, envelope: Envelope) -> Handler:
        """Find the handler of a parsed envelope and set ``envelope.function``
        to the function meant.  Raises ElvesError 402.1 / 402.2."""
        service = envelope.service
        if service not in self._functions:
            raise ElvesError(Code.UNKNOWN_SERVICE, f"Unknown Service: {envelope.mqs!r}")
        routes = self._routes.get((service, envelope.mqf.strip().lower()))
        if routes:
            for route in routes:
                if route.when is None or route.when(envelope):
                    envelope.function = route.function
                    return route.handler
        known = ", ".join(sorted(self._functions[service]))
        raise ElvesError(
            Code.UNKNOWN_FUNCTION,
            f"Unknown Function: {envelope.mqf!r} of service {service!r} (known: {known})",
        )

    async def dispatch(self, body: bytes | str | dict, call: ElvesCall) -> dict[str, Any]:
        """Parse, resolve, authenticate and run one call; always returns the
        reply envelope (an error reply for anything that went wrong)."""
        envelope = None
        try:
            envelope = parse_envelope(body)
            if envelope.mqt != "call":
                raise ElvesError(
                    Code.MALFORMED,
                    "Malformed Envelope: mqt is 'back' (an answer); a call says \"mqt\": \"call\"",
                )
            handler = self.resolve(envelope)
            check_storable(envelope)
            for hook in self._before:
                await hook(envelope, call)
            fields = await handler(envelope, call)
            return reply_envelope(envelope, fields)
        except ElvesError as err:
            return error_envelope(err, envelope, body)
        except ValueRefusedError as exc:
            # the database refused a value for its content: the caller's
            # input, not a failure of ours (check_storable refuses NULs first)
            return error_envelope(ElvesError(Code.MALFORMED, f"Bad Argument: {exc}"), envelope, body)
        except Exception as exc:
            log.exception("Elves handler of %r failed", envelope)
            err = ElvesError(Code.INTERNAL, f"Internal Error: {type(exc).__name__}")
            return error_envelope(err, envelope, body)

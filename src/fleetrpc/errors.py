"""Every exception fleetrpc raises.

Pure Python on purpose: the compiled core imports these classes, so the
compiled and the pure-Python variants raise the same types with the same
messages.
"""

from __future__ import annotations


class FleetRpcError(Exception):
    """Base class of every fleetrpc error."""


# -- wire / input -----------------------------------------------------------


class CodecError(FleetRpcError, ValueError):
    """An MQTT topic or payload that does not follow the protocol.

    The message says what was wrong; the offending message is dropped and
    counted, never allowed to crash the receiver.
    """


class ValidationError(FleetRpcError, ValueError):
    """A request that is malformed before it ever reaches the wire
    (missing method, bad device id, negative timeout, ...)."""


# -- calls ------------------------------------------------------------------


class RpcTimeoutError(FleetRpcError, TimeoutError):
    """The device did not answer before the call's deadline."""


class WindowFullError(RpcTimeoutError):
    """The call was never sent: this node's in-flight window
    (``inflight_window``) stayed full until the call's deadline.  The device
    is not to blame; the node was saturated (a TimeoutError, so that code
    retrying timeouts retries it too)."""


class BrokerUnavailableError(RpcTimeoutError):
    """The broker connection is down: the call was refused at once
    (``broker_down = "fail"``), or its deadline passed while the connection
    was down or lost (``"wait"``).  The device is not to blame (a
    TimeoutError, so that code retrying timeouts retries it too)."""


class DeviceOfflineError(FleetRpcError):
    """A lightweight call was made to a device that is not connected."""


class QueueFullError(FleetRpcError):
    """The device's queue already holds its maximum number of calls."""


class DispatcherClosedError(FleetRpcError):
    """The dispatcher is shutting down or closed; the call was not completed."""


class RemoteError(FleetRpcError):
    """The remote side answered with an error object instead of a result."""


#: Why a REPLY with an empty payload is not JSON: the codec's ``Message.error``
#: for it, in both variants (``_core/codec_py.py``, ``_core/codec.pyx``).
EMPTY_REPLY = "reply is not valid JSON: empty payload"


class ReplyNotJsonError(FleetRpcError):
    """The device's reply was not valid JSON (HTTP 406 in ThingsBoard).

    ``empty`` is True when the reply was empty, which ThingsBoard answers
    as a success without a body (an empty 200), not as a 406.  The
    dispatcher builds this error from the codec's reason; ``empty`` is
    decided here, from that reason (:data:`EMPTY_REPLY`), in one place.
    """

    def __init__(self, message: str = "", *, empty: bool | None = None) -> None:
        super().__init__(message)
        #: the reply was empty (not a malformed one)
        self.empty: bool = message.endswith(EMPTY_REPLY) if empty is None else empty


class UnknownRequestError(FleetRpcError, LookupError):
    """A reply or ack arrived for a request id that is not pending."""


class WrongDeviceError(FleetRpcError):
    """A device replied to a request that was sent to another device."""


# -- persistent RPC ---------------------------------------------------------


class InvalidTransitionError(FleetRpcError):
    """A persistent RPC status change that the lifecycle does not allow."""


class RpcNotFoundError(FleetRpcError, LookupError):
    """No persistent RPC with that id (for that tenant)."""


class StoreError(FleetRpcError):
    """The persistent store failed; the operation was not applied."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or cannot take the write right now
    (down, busy, locked, full, a conflicting transaction): trying the same
    operation again later may succeed.  Any other :class:`StoreError` would
    fail again."""


class ValueRefusedError(StoreError, ValidationError):
    """The database refused a value for its content (PostgreSQL: text or
    jsonb holding the NUL character), nothing of the statement applied:
    bad input, not a failing database (the API answers 400).  The checks at
    the edges refuse such values first; this is what reaches the caller
    where one was missed."""


class AlreadyExistsError(StoreError):
    """A row with that key is already stored (a unique or primary-key
    violation); nothing of the statement was applied."""


class DuplicateRpcError(AlreadyExistsError):
    """An RPC with that id is already stored (a reused ``requestUUID``)."""


# -- infrastructure ---------------------------------------------------------


class LeaseLostError(StoreError):
    """A write fenced by a cluster lease was refused: the lease moved to
    another node (fleetrpc/cluster), which now does this work."""


class BrokerError(FleetRpcError, RuntimeError):
    """A throwaway broker could not be found, started or stopped."""


# -- access -----------------------------------------------------------------


class AuthError(FleetRpcError):
    """Missing, expired or forged credentials."""


class PermissionDeniedError(FleetRpcError):
    """Valid credentials, but not allowed to act on that device."""


# -- entities ---------------------------------------------------------------


class EntityNotFoundError(FleetRpcError, LookupError):
    """No tenant, customer, user or device with that id (for that tenant:
    another tenant's entity is "not found" too, never "forbidden").  The
    message is ThingsBoard's (``Device with id [<uuid>] is not found``)."""


class EntitiesLimitExceededError(ValidationError):
    """The tenant has as many entities of that type as it may have
    (``store.max_devices_per_tenant``); nothing was created.  ThingsBoard's
    EntitiesLimitExceededException (a DataValidationException), with its
    message ("Devices limit reached"); its API answers 403, errorCode 41,
    with ``entityType`` and ``limit``."""

    def __init__(self, entity_type: str, limit: int, *, message: str | None = None) -> None:
        #: the ThingsBoard entity type: "DEVICE"
        self.entity_type = entity_type
        self.limit = limit
        # ``message``: a command's own explanation, in place of ThingsBoard's
        super().__init__(message or f"{entity_type.replace('_', ' ').capitalize()}s limit reached")


class BusyError(FleetRpcError):
    """More work of one kind is waiting than the server takes at once (the
    password checks of a burst of logins); nothing was done.  The REST API
    answers 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        #: seconds after which trying again is sensible
        self.retry_after_s = retry_after_s

"""What a fleet job is: its specification, its status, its per-device outcomes.

A job sends one RPC to many devices.  Its *specification* (:class:`JobSpec`)
says which devices (:class:`Targets`), what call, how fast
(:class:`Rollout`) and when to give up (:class:`AbortCriterion`).  The
vocabulary follows AWS IoT Jobs (rollout, abort criteria); the JSON shape
of a job follows ThingsBoard's generic Job API (``successfulCount``,
``failedCount``, ``discardedCount``, ``totalCount``), so both feel familiar.

Everything a client sends is parsed by :func:`parse_spec`, which raises
:class:`~fleetrpc.errors.ValidationError` with a message naming the field.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any

import msgspec

from ..dispatch.options import MAX_EPOCH_MS, MAX_TIMEOUT_MS
from ..errors import FleetRpcError, ValidationError
from ..store.base import storable_problem, text_problem
from ..wire import check_json_depth

__all__ = [
    "JobNotFoundError",
    "JobStatus",
    "DeviceOutcome",
    "FailureType",
    "Targets",
    "ExponentialRate",
    "Rollout",
    "AbortCriterion",
    "JobSpec",
    "JobCounts",
    "Job",
    "JobDevice",
    "parse_spec",
    "parse_rate",
    "TERMINAL_JOB",
    "EntityRef",
    "JobResult",
    "JobView",
    "JobDeviceView",
    "abridge_job",
    "abridge_spec",
]


class JobNotFoundError(FleetRpcError, LookupError):
    """No job with that id for that tenant (or no more: deleted)."""


class JobStatus(str, enum.Enum):
    """A job's status (ThingsBoard's Job statuses, plus ABORTED)."""

    QUEUED = "QUEUED"          # stored, not started yet
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"    # every target has an outcome
    ABORTED = "ABORTED"        # an abort criterion was met
    CANCELLED = "CANCELLED"    # cancelled by a user
    FAILED = "FAILED"          # the job itself could not run (targets unresolvable ...)


TERMINAL_JOB = frozenset({JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.CANCELLED, JobStatus.FAILED})


class DeviceOutcome(str, enum.Enum):
    """What happened to one target device."""

    IN_PROGRESS = "IN_PROGRESS"  # the call was handed to the device's queue
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"            # an error reply, a reply not JSON, a queue full, ...
    TIMED_OUT = "TIMED_OUT"
    OFFLINE = "OFFLINE"          # lightweight call to a device not connected
    CANCELLED = "CANCELLED"      # in flight when the job was cancelled (outcome ignored)
    SKIPPED = "SKIPPED"          # not started: the job was cancelled or aborted first


#: Outcomes that end a device's part in the job.
FINAL_OUTCOMES = frozenset(DeviceOutcome) - {DeviceOutcome.IN_PROGRESS}


class FailureType(str, enum.Enum):
    """Which outcomes an abort criterion counts (AWS IoT Jobs' names)."""

    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    OFFLINE = "OFFLINE"
    ALL = "ALL"  # every outcome that is not SUCCEEDED


# -- the specification ----------------------------------------------------------


class Targets(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """Which devices a job reaches: exactly one selector.

    ``device_ids`` (a list, at most 100,000), ``device_type``, ``label``,
    ``name_pattern`` (``*`` is the wildcard, every other character matches
    itself, case-sensitively), ``customer_id``, or ``all`` (every device of
    the tenant).  Each string is at most 255 characters.
    """

    device_ids: list[str] | None = None
    device_type: str | None = None
    label: str | None = None
    name_pattern: str | None = None
    customer_id: str | None = None
    all: bool = False

    def selector(self) -> tuple[str, Any]:
        """``(kind, value)`` of the one selector set."""
        chosen = [(k, v) for k, v in (
            ("deviceIds", self.device_ids), ("deviceType", self.device_type),
            ("label", self.label), ("namePattern", self.name_pattern),
            ("customerId", self.customer_id),
        ) if v is not None]
        if self.all:
            chosen.append(("all", True))
        if len(chosen) != 1:
            names = ", ".join(k for k, _ in chosen) or "none"
            raise ValidationError(
                "targets must name exactly one of deviceIds, deviceType, label, namePattern, "
                f"customerId, all (got {names})"
            )
        return chosen[0]


class ExponentialRate(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Start slow and speed up (AWS IoT Jobs' ``exponentialRate``): the rate
    starts at ``base_per_minute`` and is multiplied by ``increment_factor``
    each time ``every_succeeded`` more devices have succeeded."""

    base_per_minute: float
    increment_factor: float
    every_succeeded: int


class Rollout(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """How fast devices are started.  ``max_per_minute`` caps the rate
    (``None``: as fast as the in-flight bound allows); ``max_in_flight``
    bounds the devices whose call has started and not ended."""

    max_per_minute: float | None = None
    max_in_flight: int = 1000
    exponential_rate: ExponentialRate | None = None


class AbortCriterion(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Abort the job once, among at least ``min_executed`` devices with an
    outcome, the share of ``failure_type`` outcomes exceeds
    ``threshold_percentage``."""

    failure_type: FailureType = FailureType.ALL
    threshold_percentage: float = 100.0
    min_executed: int = 1


class JobSpec(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """What a client asks for (the body of ``POST /api/jobs``)."""

    targets: Targets
    method: str
    #: Left out: ``{}``; ``null`` is sent as ``null`` (see dispatch.options.NO_PARAMS).
    params: Any = msgspec.UNSET
    name: str | None = None
    #: One attempt's timeout in milliseconds (ThingsBoard's default 10 s,
    #: raised to the server's minimum).
    timeout: int | None = None
    oneway: bool = False
    persistent: bool = False
    #: Persistent jobs: epoch ms after which an undelivered call expires.
    expiration_time: int | None = None
    retries: int | None = None
    rollout: Rollout = msgspec.field(default_factory=Rollout)
    abort: list[AbortCriterion] = msgspec.field(default_factory=list)
    #: On cancel, calls already in flight are left to finish (their outcome
    #: is recorded) unless this is set (they are recorded CANCELLED and
    #: persistent ones deleted, which stops those still queued).
    cancel_in_flight: bool = False


_SPEC_DECODER = msgspec.json.Decoder(JobSpec)

#: The longest type, label, name pattern, customer id, device id or job
#: name: a device's name, type and label hold at most 255 characters (the
#: registry's limit), so a longer selector matches nothing -- and SQLite
#: fails a GLOB pattern over 50,000 bytes, which failed the job.
MAX_TEXT = 255
#: The slowest rate (devices per minute), one start in about 17 hours:
#: a smaller one is a mistake, and 5e-324 made the rate per second 0.0 (the
#: pacer divided by it and the job failed).
MIN_PER_MINUTE = 0.001
MAX_PER_MINUTE = 6_000_000
#: The most abort criteria: every outcome is checked against each (a list
#: of 100,000, as the body limit allowed, made a job's run quadratic), and
#: four failure types need no more than a few thresholds each.
MAX_ABORT_CRITERIA = 10


def parse_spec(body: bytes | dict) -> JobSpec:
    """Validate a job specification (JSON bytes or a decoded dict).
    Raises ValidationError with a message naming the bad field."""
    try:
        if isinstance(body, (bytes, bytearray, memoryview, str)):
            if isinstance(body, (bytes, bytearray)):
                check_json_depth(body)
            spec = _SPEC_DECODER.decode(body)
        else:
            spec = msgspec.convert(body, JobSpec)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid job: {exc}") from None
    except msgspec.DecodeError:
        raise ValidationError("invalid job: the body is not valid JSON") from None
    except RecursionError:  # deeper than MAX_JSON_DEPTH (JsonTooDeep), or than msgspec recurses
        raise ValidationError("invalid job: the JSON is nested too deeply") from None
    check_spec(spec)
    return spec


def check_spec(spec: JobSpec) -> None:
    """The rules msgspec's types cannot say; raises ValidationError.
    A call's options follow the RPC API's rules (fleetrpc.dispatch.options):
    what a single call would refuse is refused here, with a 400, instead of
    a job that fails every device with the same error."""
    kind, value = spec.targets.selector()
    if kind == "deviceIds":
        if not value:
            raise ValidationError("targets.deviceIds is empty")
        if len(value) > 100_000:
            raise ValidationError("targets.deviceIds lists more than 100000 devices; select by type, label or customer")
        if any(len(v) > MAX_TEXT for v in value):
            raise ValidationError(f"targets.deviceIds holds an id longer than {MAX_TEXT} characters")
    elif kind != "all" and (not isinstance(value, str) or not value.strip()):
        raise ValidationError(f"targets.{kind} is empty")
    elif kind != "all" and len(value) > MAX_TEXT:
        raise ValidationError(f"targets.{kind} is longer than {MAX_TEXT} characters")
    if any("\x00" in v for v in (value if kind == "deviceIds" else [value]) if isinstance(v, str)):
        # No stored name, type or id holds NUL; PostgreSQL fails the query.
        raise ValidationError(f"targets.{kind} must not contain the NUL character")
    if not spec.method or len(spec.method) > 128:
        raise ValidationError("method must be 1-128 characters")
    if spec.name is not None and len(spec.name) > MAX_TEXT:
        raise ValidationError(f"name is longer than {MAX_TEXT} characters")
    if spec.timeout is not None and not 0 < spec.timeout <= MAX_TIMEOUT_MS:
        raise ValidationError(f"timeout must be a positive number of milliseconds up to {MAX_TIMEOUT_MS}, "
                              f"not {spec.timeout}")
    if spec.retries is not None and not 0 <= spec.retries <= 1_000_000:
        raise ValidationError(f"retries must be in [0, 1000000], not {spec.retries}")
    if spec.expiration_time is not None and not 0 <= spec.expiration_time <= MAX_EPOCH_MS:
        raise ValidationError(f"expirationTime must be epoch milliseconds in [0, {MAX_EPOCH_MS}], "
                              f"not {spec.expiration_time}")
    if spec.persistent:
        # Stored with every call: what the database cannot store fails the calls.
        problem = text_problem(spec.method)
        if problem is not None:
            raise ValidationError(f"method cannot be stored: {problem}")
        problem = storable_problem({} if spec.params is msgspec.UNSET else spec.params)
        if problem is not None:
            raise ValidationError(f"params cannot be stored: {problem}")
    r = spec.rollout
    if r.max_per_minute is not None and not (
            MIN_PER_MINUTE <= r.max_per_minute <= MAX_PER_MINUTE and math.isfinite(r.max_per_minute)):
        raise ValidationError(
            f"rollout.maxPerMinute must be in [{MIN_PER_MINUTE:g}, {MAX_PER_MINUTE}], not {r.max_per_minute}")
    if not 1 <= r.max_in_flight <= 1_000_000:
        raise ValidationError(f"rollout.maxInFlight must be in [1, 1000000], not {r.max_in_flight}")
    e = r.exponential_rate
    if e is not None:
        if not (MIN_PER_MINUTE <= e.base_per_minute <= MAX_PER_MINUTE and math.isfinite(e.base_per_minute)):
            raise ValidationError(
                f"rollout.exponentialRate.basePerMinute must be in [{MIN_PER_MINUTE:g}, {MAX_PER_MINUTE}]")
        if not (1 < e.increment_factor <= 5 and math.isfinite(e.increment_factor)):
            raise ValidationError("rollout.exponentialRate.incrementFactor must be in (1, 5]")
        if e.every_succeeded < 1:
            raise ValidationError("rollout.exponentialRate.everySucceeded must be >= 1")
    if len(spec.abort) > MAX_ABORT_CRITERIA:
        raise ValidationError(f"abort holds at most {MAX_ABORT_CRITERIA} criteria, not {len(spec.abort)}")
    for i, c in enumerate(spec.abort):
        if not (0 <= c.threshold_percentage <= 100 and math.isfinite(c.threshold_percentage)):
            raise ValidationError(f"abort[{i}].thresholdPercentage must be in [0, 100], not {c.threshold_percentage}")
        if c.min_executed < 1:
            raise ValidationError(f"abort[{i}].minExecuted must be >= 1, not {c.min_executed}")


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")


def parse_rate(text: str) -> float:
    """``"100/s"`` or ``"600/min"`` -> devices per minute (the CLI's form)."""
    m = _RATE.match(text)
    if m is None:
        raise ValidationError(f"rate {text!r} is not of the form N/s or N/min")
    n = float(m.group(1))
    if n <= 0:
        raise ValidationError(f"rate {text!r} must be positive")
    return n * 60 if m.group(2).startswith("s") else n


# -- status and results ---------------------------------------------------------


class JobCounts(msgspec.Struct, kw_only=True, rename="camel"):
    """How many targets have each outcome (``queued`` = not started yet)."""

    total: int = 0
    queued: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    offline: int = 0
    cancelled: int = 0
    skipped: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out + self.offline + self.cancelled

    def add(self, outcome: DeviceOutcome, n: int = 1) -> None:
        name = _COUNT_FIELD[outcome]
        setattr(self, name, getattr(self, name) + n)


_COUNT_FIELD = {
    DeviceOutcome.IN_PROGRESS: "in_progress",
    DeviceOutcome.SUCCEEDED: "succeeded",
    DeviceOutcome.FAILED: "failed",
    DeviceOutcome.TIMED_OUT: "timed_out",
    DeviceOutcome.OFFLINE: "offline",
    DeviceOutcome.CANCELLED: "cancelled",
    DeviceOutcome.SKIPPED: "skipped",
}


class Job(msgspec.Struct, kw_only=True):
    """A stored job: its spec, where its rollout is and what came back."""

    id: str
    tenant_id: str
    #: The creator's customer (a customer user's job reaches only its devices).
    customer_id: str | None
    created_by: str | None
    spec: JobSpec
    status: JobStatus = JobStatus.QUEUED
    counts: JobCounts = msgspec.field(default_factory=JobCounts)
    #: Reply values where they are numbers or small enums (see Aggregate).
    aggregate: dict = msgspec.field(default_factory=dict)
    #: The last target started: targets are started in device-id order, so
    #: a resumed job starts after it.
    cursor: str | None = None
    #: Every target up to and including this id has its outcome stored
    #: (``None``: none yet).  Targets after it, up to the cursor, were
    #: started and some may still be in flight: a restart recovers them by
    #: paging the targets in that range (their rows are written once, with
    #: their outcome, not before they are sent).
    settled_through: str | None = None
    created_time: int = 0
    start_ts: int | None = None
    finish_ts: int | None = None
    cancellation_ts: int | None = None
    general_error: str | None = None
    #: What a listing left out of this job (see :func:`abridge_job`); not stored.
    abridged: tuple[str, ...] = ()

    def to_json(self) -> JobView:
        """The job as the REST API shows it (ThingsBoard's Job shape)."""
        c = self.counts
        return JobView(
            id=EntityRef("JOB", self.id),
            created_time=self.created_time,
            tenant_id=EntityRef("TENANT", self.tenant_id),
            customer_id=None if self.customer_id is None else EntityRef("CUSTOMER", self.customer_id),
            key=self.spec.name or self.spec.method,
            status=self.status,
            configuration=self.spec,
            result=JobResult(
                successful_count=c.succeeded,
                failed_count=c.failed + c.timed_out + c.offline,
                discarded_count=c.skipped + c.cancelled,
                total_count=c.total,
                counts=c,
                aggregate=self.aggregate,
                general_error=self.general_error,
                start_ts=self.start_ts,
                finish_ts=self.finish_ts,
                cancellation_ts=self.cancellation_ts,
            ),
            abridged=list(self.abridged) if self.abridged else msgspec.UNSET,
        )


# -- listings -------------------------------------------------------------------
#
# A job may be large: params up to the transport's max_payload, 100,000
# device ids, an aggregate of 16 fields of 32 values.  GET /api/jobs shows
# up to 1,000 jobs a page (jobs/api.py's MAX_LISTED_JOBS), so a listed job
# shows these parts only while they are small (about 20 KiB at most in
# all); GET /api/job/{id} shows the whole job.

#: A part of a listed job larger than this (bytes of JSON) is left out or cut.
LISTED_PART_BYTES = 4096
#: The most device ids a listed job shows of a ``deviceIds`` list over
#: :data:`LISTED_PART_BYTES` (fewer when these are larger).
LISTED_DEVICE_IDS = 10

_encode_part = msgspec.json.Encoder().encode


def abridge_spec(spec: JobSpec) -> tuple[JobSpec, list[str]]:
    """``spec`` as a listing shows it, and the parts it left out or cut
    (``configuration.params``, ``configuration.targets.deviceIds``)."""
    cut: list[str] = []
    params = spec.params
    if params is not msgspec.UNSET and len(_encode_part(params)) > LISTED_PART_BYTES:
        params = msgspec.UNSET
        cut.append("configuration.params")
    targets = spec.targets
    ids = targets.device_ids
    if ids is not None and len(_encode_part(ids)) > LISTED_PART_BYTES:
        # Its first ids, at most 10, within the bound: ten ids of 255
        # characters that JSON escapes are 15 KiB (a list of 10 was kept whole).
        shown = ids[:LISTED_DEVICE_IDS]
        while len(shown) > 1 and len(_encode_part(shown)) > LISTED_PART_BYTES:
            shown = shown[:-1]
        targets = msgspec.structs.replace(targets, device_ids=shown)
        cut.append("configuration.targets.deviceIds")
    if not cut:
        return spec, cut
    return msgspec.structs.replace(spec, params=params, targets=targets), cut


def abridge_job(job: Job) -> Job:
    """``job`` as a listing shows it: see :func:`abridge_spec`; an
    aggregate over :data:`LISTED_PART_BYTES` is left out too (``{}``)."""
    spec, cut = abridge_spec(job.spec)
    aggregate = job.aggregate
    if len(_encode_part(aggregate)) > LISTED_PART_BYTES:
        aggregate = {}
        cut.append("result.aggregate")
    if not cut:
        return job
    return msgspec.structs.replace(job, spec=spec, aggregate=aggregate, abridged=tuple(job.abridged) + tuple(cut))


class EntityRef(msgspec.Struct, gc=False):
    """ThingsBoard's id object: ``{"entityType": "JOB", "id": "<uuid>"}``."""

    entityType: str
    id: str


class JobResult(msgspec.Struct, kw_only=True, rename="camel"):
    """A job's outcome so far: ThingsBoard's Job result counters, the
    counts per outcome and the aggregate of the replies."""

    successful_count: int
    failed_count: int
    discarded_count: int
    total_count: int
    counts: JobCounts
    aggregate: dict
    general_error: str | None
    start_ts: int | None
    finish_ts: int | None
    cancellation_ts: int | None


class JobView(msgspec.Struct, kw_only=True, rename="camel"):
    """A job in the REST API and in its events."""

    id: EntityRef
    created_time: int
    tenant_id: EntityRef
    customer_id: EntityRef | None
    type: str = "RPC"
    key: str
    status: JobStatus
    configuration: JobSpec
    result: JobResult
    #: In a listing only, when it left parts of a large job out or cut them
    #: (``configuration.params``, ``configuration.targets.deviceIds`` (its
    #: first 10 ids), ``result.aggregate``): GET /api/job/{id} shows them whole.
    abridged: list[str] | msgspec.UnsetType = msgspec.UNSET


class JobDevice(msgspec.Struct, kw_only=True):
    """One target's part in a job."""

    job_id: str
    device_id: str
    outcome: DeviceOutcome
    result: Any = None
    error: str | None = None
    rpc_id: str | None = None
    start_ts: int | None = None
    finish_ts: int | None = None

    def to_json(self, name: str | None = None) -> JobDeviceView:
        return JobDeviceView(
            device_id=EntityRef("DEVICE", self.device_id), device_name=name, status=self.outcome, result=self.result,
            error=self.error, rpc_id=self.rpc_id, start_ts=self.start_ts, finish_ts=self.finish_ts,
        )


class JobDeviceView(msgspec.Struct, kw_only=True, rename="camel"):
    """One target's row in ``GET /api/job/{id}/devices``."""

    device_id: EntityRef
    #: the device's name in the registry now; None when it was deleted since
    device_name: str | None = None
    status: DeviceOutcome
    result: Any
    error: str | None
    rpc_id: str | None
    start_ts: int | None
    finish_ts: int | None

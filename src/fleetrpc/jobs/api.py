"""The jobs REST API, in the shape of ThingsBoard's generic Job API.

    POST   /api/jobs                    create and start a job (body: JobSpec)
    GET    /api/jobs?pageSize&page[&statuses=RUNNING,COMPLETED]
    GET    /api/job/{jobId}
    POST   /api/job/{jobId}/cancel
    DELETE /api/job/{jobId}             a finished job and its per-device rows
    GET    /api/job/{jobId}/devices?pageSize&page[&status=FAILED]

Roles as for RPC: a tenant administrator runs jobs over its tenant's devices;
a customer user over its customer's devices only (its jobs are scoped to
its customer, and a target it does not own is refused with 403); the system
administrator runs none.  Another tenant's job is a 404, never a leak.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiohttp import web

from ..api.errors import ApiError
from ..api.keys import CTX, PRINCIPAL
from ..api.openapi import Param, operation
from ..api.thingsboard.access import check_uuid
from ..api.thingsboard.paging import page_args
from ..errors import ValidationError
from .engine import JobNotFoundError
from .model import DeviceOutcome, JobDeviceView, JobSpec, JobStatus, JobView, parse_spec

__all__ = ["MAX_LISTED_JOBS", "setup"]

_MAX_BODY = 8 * 1024 * 1024
#: The most jobs a page of ``GET /api/jobs`` holds (every other listing:
#: 10,000).  A listed job is abridged to about 20 KiB at most (params,
#: deviceIds and aggregate up to 4 KiB each, method, name, abort criteria,
#: error; 18 KiB measured with every part at its largest): 10,000 of them
#: were a page of 170 MiB, built in memory at once; 1,000 are 17 MiB at
#: worst, 8 MiB with 4 KiB params each, under 1 MiB for ordinary jobs.
MAX_LISTED_JOBS = 1000

#: The most rows a page of ``GET /api/job/{id}/devices`` holds.  A row
#: carries its device's whole reply, up to max_payload (64 KiB by default):
#: 10,000 rows were a page of up to 640 MiB built in memory; 1,000 are
#: 64 MiB at worst, a few hundred KiB for ordinary replies.
MAX_DEVICE_ROWS = 1000


def _principal(request: web.Request) -> Any:
    p = request[PRINCIPAL]
    if p.authority not in ("TENANT_ADMIN", "CUSTOMER_USER"):
        raise ApiError.forbidden()
    return p


def _customer_scope(p: Any) -> str | None:
    return p.customer_id if p.authority == "CUSTOMER_USER" else None


class JobPage(msgspec.Struct, rename="camel"):
    """ThingsBoard's PageData of jobs."""

    data: list[JobView]
    total_pages: int
    total_elements: int
    has_next: bool


class JobDevicePage(msgspec.Struct, rename="camel"):
    """ThingsBoard's PageData of a job's per-device rows."""

    data: list[JobDeviceView]
    total_pages: int
    total_elements: int
    has_next: bool


_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> web.Response:
    return web.Response(body=_encode(value), content_type="application/json")


def _page(cls: type, items: list, total: int, page_size: int, page: int) -> web.Response:
    pages = math.ceil(total / page_size) if page_size else 0
    return _json(cls(items, pages, total, page + 1 < pages))


async def _job_of(request: web.Request) -> tuple[Any, Any]:
    p = _principal(request)
    jobs = request.app[CTX].jobs
    # A job id is a UUID as in every other path: 400 for one that is not,
    # and any case of its hex digits names the same job (ids are stored lowercase).
    job_id = check_uuid(request.match_info["job_id"])
    try:
        job = await jobs.get(p.tenant_id, job_id)
    except JobNotFoundError:
        raise ApiError.not_found(f"Job with id [{job_id}] is not found") from None
    scope = _customer_scope(p)
    if scope is not None and job.customer_id != scope:
        raise ApiError.forbidden()
    return p, job


async def create(request: web.Request) -> web.Response:
    p = _principal(request)
    ctx = request.app[CTX]
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise ApiError.bad_request("job body too large")
    body = await request.read()
    if len(body) > _MAX_BODY:  # a chunked body has no Content-Length to check first
        raise ApiError.bad_request("job body too large")
    try:
        spec = parse_spec(body)
        await ctx.job_targets.check_access(p.tenant_id, _customer_scope(p), spec.targets)
        job = await ctx.jobs.submit(p.tenant_id, spec, customer_id=_customer_scope(p), created_by=p.user_id)
    except PermissionError as exc:
        raise (ApiError.forbidden(str(exc)) if str(exc) else ApiError.forbidden()) from None
    except ValidationError as exc:
        raise ApiError.bad_request(str(exc)) from None
    return _json(job.to_json())


async def get(request: web.Request) -> web.Response:
    _, job = await _job_of(request)
    return _json(job.to_json())


async def list_jobs(request: web.Request) -> web.Response:
    p = _principal(request)
    # pageSize 1-1,000 (MAX_LISTED_JOBS), page as in every other listing;
    # each listed job is abridged past a few KiB (model.abridge_job): its
    # params alone may be max_payload, its deviceIds 100,000 ids.
    page_size, page = page_args(request, MAX_LISTED_JOBS)
    statuses = []
    for name in filter(None, request.query.get("statuses", "").split(",")):
        try:
            statuses.append(JobStatus(name.strip().upper()))
        except ValueError:
            raise ApiError.bad_request(f"unknown job status {name!r}") from None
    jobs, total = await request.app[CTX].jobs.list(
        p.tenant_id, page_size, page, customer_id=_customer_scope(p), statuses=statuses,
    )
    return _page(JobPage, [j.to_json() for j in jobs], total, page_size, page)


async def cancel(request: web.Request) -> web.Response:
    p, job = await _job_of(request)
    job = await request.app[CTX].jobs.cancel(p.tenant_id, job.id)
    return _json(job.to_json())


async def delete(request: web.Request) -> web.Response:
    p, job = await _job_of(request)
    if p.authority != "TENANT_ADMIN":
        raise ApiError.forbidden()
    try:
        await request.app[CTX].jobs.delete(p.tenant_id, job.id)
    except ValidationError as exc:
        raise ApiError.bad_request(str(exc)) from None
    return web.Response(status=200)


async def devices(request: web.Request) -> web.Response:
    p, job = await _job_of(request)
    page_size, page = page_args(request, MAX_DEVICE_ROWS)
    outcome = None
    if "status" in request.query:
        try:
            outcome = DeviceOutcome(request.query["status"].upper())
        except ValueError:
            raise ApiError.bad_request(f"unknown device status {request.query['status']!r}") from None
    ctx = request.app[CTX]
    rows, total = await ctx.jobs.devices(p.tenant_id, job.id, page_size, page, outcome=outcome)
    names = await ctx.devices.names(p.tenant_id, [r.device_id for r in rows])
    return _page(JobDevicePage, [r.to_json(names.get(r.device_id)) for r in rows], total, page_size, page)


def setup(app: web.Application, ctx: Any) -> None:
    """Add the jobs routes (``ctx.jobs`` is the JobEngine, ``ctx.job_targets``
    the registry-backed target resolver)."""
    r = app.router
    paging = (Param("pageSize", int, True, f"Jobs per page (1-{MAX_LISTED_JOBS})"),
              Param("page", int, True, "Page, from 0"))
    row_paging = (Param("pageSize", int, True, f"Rows per page (1-{MAX_DEVICE_ROWS})"), paging[1])
    not_found = {404: "No such job in this tenant"}
    operation(app, r.add_post("/api/jobs", create), tag="jobs", body=JobSpec, response=JobView,
              summary="Create and start a job: one RPC to many devices",
              statuses={400: "Bad job (the message names the field)", 403: "A target the user may not reach"})
    operation(app, r.add_get("/api/jobs", list_jobs), tag="jobs", response=JobPage,
              summary="The tenant's jobs, newest first (a customer user's: its customer's); a "
                      "large job's params, deviceIds and aggregate are left out or cut "
                      "(its abridged field says which)",
              query=paging + (Param("statuses", str, False, "Comma-separated job statuses"),))
    operation(app, r.add_get("/api/job/{job_id}", get), tag="jobs", response=JobView,
              summary="A job: status, counts per outcome, aggregate of the replies",
              statuses=not_found)
    operation(app, r.add_post("/api/job/{job_id}/cancel", cancel), tag="jobs", response=JobView,
              summary="Cancel a job: devices not started are skipped (answers within 30 s; a job "
                      "with calls still in flight comes back RUNNING, with its cancellationTs)",
              statuses=not_found)
    operation(app, r.add_delete("/api/job/{job_id}", delete), tag="jobs", response_kind="empty",
              summary="Delete a finished job (tenant administrator)",
              statuses={400: "The job is still running", **not_found})
    operation(app, r.add_get("/api/job/{job_id}/devices", devices), tag="jobs", response=JobDevicePage,
              summary="A job's per-device results, in device order",
              statuses=not_found,
              query=row_paging + (Param("status", str, False, "One device outcome",
                                    tuple(o.value for o in DeviceOutcome)),))

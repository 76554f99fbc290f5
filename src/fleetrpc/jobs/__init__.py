"""Fleet jobs: one RPC to many devices, with rollout, abort and progress.

    from fleetrpc.jobs import JobEngine, parse_spec

    engine = JobEngine(dispatcher, JobRepository(db), persistent=persistent_rpc, emit=bus.emit)
    await engine.start()                       # resumes jobs a restart interrupted
    job = await engine.submit(tenant_id, parse_spec({
        "targets": {"deviceIds": ["pump-1", "pump-2"]},
        "method": "setValue", "params": 21,
        "rollout": {"maxPerMinute": 6000, "maxInFlight": 500},
        "abort": [{"failureType": "ALL", "thresholdPercentage": 5, "minExecuted": 20}],
    }))
    job = await engine.wait(tenant_id, job.id)
    print(job.counts, job.aggregate)

The model (specification, statuses, outcomes) is in :mod:`.model`, the run
in :mod:`.engine`, target resolution in :mod:`.targets`, the reply
aggregate in :mod:`.aggregate`; the stored form in
:mod:`fleetrpc.store.jobs`.
"""

from .engine import JOB_EVENTS, JobEngine, JobNotFoundError, job_rpc_id
from .model import (
    AbortCriterion,
    DeviceOutcome,
    ExponentialRate,
    FailureType,
    Job,
    JobCounts,
    JobDevice,
    JobSpec,
    JobStatus,
    Rollout,
    Targets,
    parse_rate,
    parse_spec,
)
from .targets import ListTargets, TargetSource

__all__ = [
    "JOB_EVENTS", "JobEngine", "JobNotFoundError", "job_rpc_id",
    "AbortCriterion", "DeviceOutcome", "ExponentialRate", "FailureType", "Job", "JobCounts",
    "JobDevice", "JobSpec", "JobStatus", "Rollout", "Targets", "parse_rate", "parse_spec",
    "ListTargets", "TargetSource",
]

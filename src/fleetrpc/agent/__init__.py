"""The Elves agent (``fleetrpc agent``): runs Elves apps on a server, on the
device SDK."""

from .agent import AGENT_VERSION, ElvesAgent
from .apps import WorkerResult, run_app

__all__ = ["ElvesAgent", "AGENT_VERSION", "WorkerResult", "run_app"]

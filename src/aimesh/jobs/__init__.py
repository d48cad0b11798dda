"""Asynchronous jobs on the bus: one job system for every long task.

A job is a message on the ``AIMESH_JOBS`` work-queue stream (``aimesh.jobs.<kind>``) and a
record of its state in the ``aimesh_jobs`` KV bucket. :class:`JobClient` submits (with
idempotency keys), reads, lists, cancels and watches jobs; a :class:`Worker` runs the jobs
of one kind with the handler registered for it (:func:`register_handler`), acknowledging
each message only when its job has ended; retries back off, and jobs that fail for good
land on ``aimesh.dlq.jobs.<kind>``. ``aimesh.jobs.app.create_app`` is the REST service
(``aimesh jobs serve``, imported on its own so that workers need no web framework), with
server-sent events per job; webhooks are signed with HMAC-SHA256 (:func:`verify_signature`).
"""

from aimesh.jobs.client import JobClient, job_subject
from aimesh.jobs.data import Blob, JobData, input_key, job_result, result_key, result_path
from aimesh.jobs.handlers import (
    Handler,
    JobContext,
    get_handler,
    handler_kinds,
    load_handler,
    register_handler,
)
from aimesh.jobs.states import TRANSITIONS
from aimesh.jobs.store import encode_job
from aimesh.jobs.types import TERMINAL, DeadLetter, Job, JobError, JobSpec, JobState
from aimesh.jobs.webhooks import SIGNATURE_HEADER, sign, verify_signature
from aimesh.jobs.worker import Worker, WorkerStats, consumer_name, dead_letter_subject

__all__ = [
    "SIGNATURE_HEADER",
    "TERMINAL",
    "TRANSITIONS",
    "Blob",
    "DeadLetter",
    "Handler",
    "Job",
    "JobClient",
    "JobContext",
    "JobData",
    "JobError",
    "JobSpec",
    "JobState",
    "Worker",
    "WorkerStats",
    "consumer_name",
    "dead_letter_subject",
    "encode_job",
    "get_handler",
    "handler_kinds",
    "input_key",
    "job_result",
    "job_subject",
    "load_handler",
    "register_handler",
    "result_key",
    "result_path",
    "sign",
    "verify_signature",
]

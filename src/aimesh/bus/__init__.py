"""The bus: NATS with JetStream, embedded on one machine or an existing cluster at scale.

- :func:`ensure_bus` finds (or starts) the bus of a home and returns its URL;
  :func:`open_bus` (a home's bus, with its credentials and limits) and :func:`connect` (a
  URL) return a :class:`Bus` connection.
- :func:`bus_credentials` are what a home's processes present to the bus: the embedded
  server's generated token, or the ``bus.*`` credentials of an external server.
- :func:`declare_topology` creates the streams and KV buckets the platform needs, each
  bounded (:func:`streams`, :func:`buckets`); :func:`storage_full` tells a write refused
  because one is full.
- :func:`publish_event` / :func:`subscribe_events` move typed :class:`Event` s
  (:class:`RegistryEvent`, :class:`JobEvent`).
- :class:`EmbeddedNats` runs the bundled ``nats-server`` for as long as its owner wants.
"""

from aimesh.bus.connection import Bus, connect, open_bus
from aimesh.bus.credentials import BusCredentials, bus_credentials, home_credentials
from aimesh.bus.discovery import (
    Registration,
    ServiceInstance,
    announce,
    describe_service,
    discovery_bucket,
    list_instances,
    new_instance_id,
    this_host,
    this_pid,
)
from aimesh.bus.events import (
    EVENT_KIND,
    JOB_SUBJECTS,
    KEY_SUBJECTS,
    REGISTRY_SUBJECTS,
    Event,
    EventStream,
    JobChange,
    JobEvent,
    JobState,
    PublishAck,
    RegistryEvent,
    decode_event,
    encode_event,
    job_events_subject,
    publish_event,
    subscribe_events,
)
from aimesh.bus.home import (
    BusStatus,
    embedded_bus_status,
    ensure_bus,
    redact_url,
    stop_embedded_bus,
)
from aimesh.bus.lease import Lease
from aimesh.bus.server import EmbeddedNats, nats_server_binary
from aimesh.bus.topology import (
    BUCKETS,
    DISCOVERY_BUCKET,
    DLQ_STREAM,
    DLQ_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    EVENTS_SUBJECTS,
    JOB_DATA_BUCKET,
    JOB_DATA_TTL_S,
    JOBS_BUCKET,
    JOBS_STREAM,
    JOBS_SUBJECTS,
    LEASE_TTL_S,
    LEASES_BUCKET,
    STREAMS,
    BucketSpec,
    StreamSpec,
    buckets,
    declare_topology,
    storage_full,
    streams,
)

__all__ = [
    "BUCKETS",
    "DISCOVERY_BUCKET",
    "DLQ_STREAM",
    "DLQ_SUBJECTS",
    "EVENTS_STREAM",
    "EVENTS_SUBJECTS",
    "EVENTS_SUBJECT_PREFIX",
    "EVENT_KIND",
    "JOBS_BUCKET",
    "JOBS_STREAM",
    "JOBS_SUBJECTS",
    "JOB_DATA_BUCKET",
    "JOB_DATA_TTL_S",
    "JOB_SUBJECTS",
    "KEY_SUBJECTS",
    "LEASES_BUCKET",
    "LEASE_TTL_S",
    "REGISTRY_SUBJECTS",
    "STREAMS",
    "BucketSpec",
    "Bus",
    "BusCredentials",
    "BusStatus",
    "EmbeddedNats",
    "Event",
    "EventStream",
    "JobChange",
    "JobEvent",
    "JobState",
    "Lease",
    "PublishAck",
    "Registration",
    "RegistryEvent",
    "ServiceInstance",
    "StreamSpec",
    "announce",
    "buckets",
    "bus_credentials",
    "connect",
    "declare_topology",
    "decode_event",
    "describe_service",
    "discovery_bucket",
    "embedded_bus_status",
    "encode_event",
    "ensure_bus",
    "home_credentials",
    "job_events_subject",
    "list_instances",
    "nats_server_binary",
    "new_instance_id",
    "open_bus",
    "publish_event",
    "redact_url",
    "stop_embedded_bus",
    "storage_full",
    "streams",
    "subscribe_events",
    "this_host",
    "this_pid",
]

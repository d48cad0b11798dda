"""The starter project file ``aimesh init`` writes: every section, commented."""

from __future__ import annotations

STARTER_PROJECT_FILE = """\
# aimesh project file: what `aimesh up` runs, and how.
#
# Every setting has a default: delete what you do not need. Environment variables override
# this file (AIMESH_ and the path with __, e.g. AIMESH_GATEWAY__PORT=9080).
# `aimesh up` starts the stack, `aimesh status` shows it, `aimesh logs` and `aimesh down`.

# Where aimesh keeps what it writes on this machine: registry database, artifacts, the
# embedded bus, logs (HOME/logs/<service>.log) and the running stack (HOME/run).
home: .aimesh
log_level: info            # debug, info, warning, error
log_format: console        # console (readable) or json (one object a line)

# What `aimesh up` runs, in this order: registry, lake, jobs, model services, workers, gateway.
services:
  registry: true
  lake: true                 # the data lake's REST API (/api/lake through the gateway)
  jobs: true                 # the jobs API (/api/jobs): follow, cancel, fetch results
  gateway: true
  workers:                   # job workers: one process per replica, each with /health
    - kind: inference        # runs ?async=true model calls
      concurrency: 8
    - kind: training         # runs `aimesh train` jobs
  models: []
  # Push a model first (`aimesh models push fraud model.skops --alias champion`), then:
  # models:
  #   - ref: fraud@champion   # NAME@ALIAS (followed live), NAME@VERSION, or NAME (latest)
  #     replicas: 2           # separate processes, each on its own free ports
  #     workers: 1            # processes per replica, sharing its ports
  #     batching: true        # coalesce concurrent requests into one model call
  #     max_batch_size: 64
  #     max_latency_ms: 2     # longest wait for a batch to fill, under load

# The NATS bus. Unset url: the embedded server of this home, started when needed (and left
# running by `aimesh down`; `aimesh down --bus` or `aimesh bus stop` stops it).
bus:
  url: null                  # e.g. nats://nats.internal:4222

registry:
  host: 127.0.0.1
  port: 8100
  database_url: null         # unset: SQLite in HOME; or postgresql+psycopg://user@host/db
  artifacts_url: null        # unset: HOME/artifacts; or s3://bucket/prefix
  # Artifacts whose loading runs code (pickle, joblib, python) and extra skops types are
  # refused unless you allow them here; even then only an admin identity may push them
  # (`aimesh models push m model.pkl --trust`). Trust only files from a known source.
  # allow_code_artifacts: false
  # gc_grace_s: 3600         # garbage collection keeps unused uploads this long
  # gc_interval_s: 3600      # how often the registry collects it (0: `aimesh registry gc` only)

gateway:
  host: 127.0.0.1
  port: 8080                 # REST
  grpc_port: 8081

# Who may call the services. Every service requires a key (X-API-Key or Bearer) whenever
# any key exists: made with `aimesh keys create NAME --scope read` (stored in the registry)
# or listed here. No key anywhere: every caller on this machine is the operator.
auth:
  keys: []
  # keys:
  #   - name: my-app
  #     sha256: <64 hex digits: `aimesh keys hash KEY`, never the key itself>
  #     scopes: [infer]       # read, infer, write (read+infer+changes), admin (everything)
  #     rate_per_s: 100
  reload_s: 30               # re-read the stored keys this often, besides on key events
  # The HTTP edge of every service: who may call from a browser, under which names, and
  # whether a service may bind beyond loopback (host: 0.0.0.0) while no API key exists.
  allowed_origins: []        # browser pages that may change things: https://dash.example.com
  allowed_hosts: []          # names besides localhost and the bind address: gateway.example.com
  insecure: false            # true: bind beyond loopback without keys (warns at every start)

lake:
  port: 8200
  url: null                  # unset: HOME/lake; or s3://bucket/lake

jobs:
  port: 8300
  max_attempts: 3            # attempts before a job fails (into the dead-letter stream)
  default_timeout_s: 600     # an attempt running longer is stopped; nothing it does after counts
  timeouts_s: {training: 3600, inference: 60}   # per kind, for jobs that set no timeout
  webhook_allow: []          # internal hosts/addresses/CIDRs webhooks may call, e.g. [10.1.0.0/16]

# Which code training jobs may name beside scikit-learn, XGBoost and LightGBM estimators
# and functions marked @aimesh.training.trainer.
training:
  allowed_trainers: []       # module:Class or module:* patterns, e.g. [mycompany.models:*]


# Defaults of every model service (a services.models entry overrides its own).
serving:
  host: 127.0.0.1
  drain_timeout_s: 20        # on shutdown, wait this long for requests in flight
"""

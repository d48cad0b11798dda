"""``aimesh up``: a stack of services, each its own OS process, supervised on one machine.

- :func:`plan_stack` turns settings into :class:`ProcessSpec` s, in start order.
- :class:`Supervisor` runs them: readiness, restarts with backoff, orderly stop.
- :func:`read_state` / :class:`StackState` is what ``HOME/run/stack.json`` records;
  :func:`stack_report` checks it now; :func:`stop_stack` and :func:`start_detached` drive
  a supervisor from outside; :func:`log_files`, :func:`tail_lines`, :func:`follow` read logs.
"""

from aimesh.local.control import StopReport, clear_leftovers, start_detached, stop_stack
from aimesh.local.logs import SUPERVISOR_LOG, follow, log_files, tail_lines
from aimesh.local.plan import STAGES, ProcessSpec, plan_stack
from aimesh.local.process import RestartPolicy
from aimesh.local.starter import STARTER_PROJECT_FILE
from aimesh.local.state import (
    ProcessState,
    StackState,
    hold_stack_lock,
    read_state,
    supervisor_running,
)
from aimesh.local.status import ProcessReport, StackReport, stack_report
from aimesh.local.supervisor import Supervisor

__all__ = [
    "STAGES",
    "STARTER_PROJECT_FILE",
    "SUPERVISOR_LOG",
    "ProcessReport",
    "ProcessSpec",
    "ProcessState",
    "RestartPolicy",
    "StackReport",
    "StackState",
    "StopReport",
    "Supervisor",
    "clear_leftovers",
    "follow",
    "hold_stack_lock",
    "log_files",
    "plan_stack",
    "read_state",
    "stack_report",
    "start_detached",
    "stop_stack",
    "supervisor_running",
    "tail_lines",
]

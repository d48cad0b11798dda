"""A record kind defined only in tests: the one definition a new kind costs, and no more."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from _services import free_port, wait_for
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from aimesh.errors import InvalidRequest
from aimesh.registry import RecordKind, RecordWrite, register_kind, unregister_kind


class WidgetSpec(BaseModel):
    """What a widget holds: a model (and version) it points at, a weight, labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(max_length=128)
    version: int | None = Field(default=None, ge=1, le=2**31)
    weight: FiniteFloat = Field(default=1.0, ge=0, le=100)
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)


def check_widget(write: RecordWrite[WidgetSpec]) -> None:
    """The model (and version) must exist; a widget's model never changes once made."""
    if write.spec.version is not None:
        write.state.get_version(write.spec.model, write.spec.version)
    else:
        write.state.get_model(write.spec.model)
    if write.current is not None and write.current.spec.model != write.spec.model:
        raise InvalidRequest("a widget's model cannot change: delete it and create another")


WIDGET = RecordKind(
    name="widget",
    plural="widgets",
    spec=WidgetSpec,
    description="A test kind: points at a model version with a weight.",
    validate=check_widget,
)
GADGET = RecordKind(
    name="gadget",
    plural="gadgets",
    spec=WidgetSpec,
    description="A second test kind, admin-only, with names of lowercase letters.",
    write_scope="admin",
    name_pattern=re.compile(r"^[a-z]{1,16}$"),
    name_rule="1-16 lowercase letters",
)


@contextmanager
def kinds_registered() -> Iterator[None]:
    """WIDGET and GADGET registered while inside."""
    register_kind(WIDGET)
    register_kind(GADGET)
    try:
        yield
    finally:
        unregister_kind(WIDGET)
        unregister_kind(GADGET)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread of this process (which knows the test kinds, as
    a service started apart would not), on a free port; its URL while inside."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="served-app", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started or not thread.is_alive()) and server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

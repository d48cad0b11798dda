"""Where a request goes: the routing table fed by discovery, and the router over it.

:class:`RoutingTable` holds the live instances by model and by service name; it changes only
through :meth:`RoutingTable.put` and :meth:`RoutingTable.remove` (called by the discovery
watch) and answers :meth:`RoutingTable.match` with no I/O. :class:`Router` adds the slow
path: when no instance matches, it asks the :class:`ModelCatalog` whether the model (and
version or alias) exists, to answer 404 for what is unknown and 503 for what is unserved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from aimesh.bus import ServiceInstance
from aimesh.errors import ModelNotFound, NoInstance, StoreUnavailable, VersionNotFound
from aimesh.gateway.instances import Upstream
from aimesh.protocol import MODEL_NAME, VERSION_REF

__all__ = ["ModelCatalog", "Router", "RoutingTable", "Target"]

log = logging.getLogger("aimesh.gateway")


# Every other kind with a REST address is a service under /api/<name>/... (registry, lake,
# jobs, and those to come); models go through /v2; gateways, workers and the controller
# (their REST address is health and metrics) are not proxied at all.
_NOT_SERVICES = frozenset({"model", "gateway", "worker", "controller"})


_Place = tuple[str, str, tuple[str, int] | None, str | None, tuple[str, ...]]


@dataclass(slots=True)
class _Entry:
    upstream: Upstream
    keys: set[str]
    heartbeat: datetime


@dataclass(frozen=True, slots=True)
class Target:
    """The instances one request may go to."""

    model: str
    candidates: Sequence[Upstream]
    version: str | None
    """The version to name to the instance (``None``: whatever it serves)."""
    served: str | None = field(init=False, compare=False)
    """The one version a call reaches: the one named, or the one every instance serves;
    None while instances of several versions (or unknown) may answer. Worked out once per
    target (the routing table keeps targets until an instance changes), not per call."""

    def __post_init__(self) -> None:
        served = self.version
        if served is None:
            versions = {upstream.version for upstream in self.candidates}
            served = versions.pop() if len(versions) == 1 else None
        object.__setattr__(self, "served", served)


class ModelCatalog(Protocol):
    """What the registry knows, for the requests no instance can take."""

    async def lookup(self, name: str, ref: str | None) -> str | None:
        """Check that the model (and version or alias ``ref``) exists.

        Returns the version number ``ref`` names (``None`` without ``ref``). Raises
        ``ModelNotFound``, ``VersionNotFound``, ``AliasNotFound`` or ``InvalidName`` for
        what does not exist, ``StoreUnavailable`` when the registry cannot be asked.
        """
        ...


class RoutingTable:
    """Live instances by model name and by service name, kept current by discovery.

    An instance is its place (kind, name and addresses): several keys at one place (a
    process that re-registered under a new id) are one :class:`Upstream`, which leaves when
    its last key does. The newest record at a place says what version it serves.
    """

    def __init__(self, *, on_removed: Callable[[Upstream], None] | None = None) -> None:
        self._places: dict[_Place, _Entry] = {}
        self._place_of: dict[str, _Place] = {}
        self._seen: dict[str, float] = {}
        self._models: dict[str, list[Upstream]] = {}
        self._services: dict[str, list[Upstream]] = {}
        self._targets: dict[tuple[str, str | None], Target | None] = {}
        self._on_removed = on_removed
        self.generation = 0
        """Increases with every change that can change a route (not with heartbeats)."""

    def put(self, instance: ServiceInstance, now: float) -> None:
        """Add or refresh an instance (a heartbeat keeps the same :class:`Upstream`)."""
        fresh = Upstream.from_instance(instance)
        if fresh.kind == "model":
            routable = fresh.rest is not None or fresh.grpc_address is not None
        else:
            routable = fresh.kind not in _NOT_SERVICES and fresh.rest is not None
        if not routable:
            return
        key = fresh.key
        place: _Place = (fresh.kind, fresh.name, fresh.rest, fresh.grpc_address, fresh.apis)
        self._seen[key] = now
        previous = self._place_of.get(key)
        if previous is not None and previous != place:
            self._detach(key, previous)
        self._place_of[key] = place
        entry = self._places.get(place)
        if entry is None:
            entry = self._places[place] = _Entry(fresh, {key}, instance.heartbeat)
            group = self._models if fresh.kind == "model" else self._services
            for name in _names(fresh):
                group.setdefault(name, []).append(fresh)
            self._changed()
            log.info("instance %s at %s joined", key, fresh.label)
            return
        entry.keys.add(key)
        if instance.heartbeat < entry.heartbeat:
            return  # an older record of this place (listings come in key order, not time)
        entry.heartbeat = instance.heartbeat
        known = entry.upstream
        if (known.version, known.ref) != (fresh.version, fresh.ref):
            log.info("instance at %s now serves %s", known.label, fresh.version)
            known.version, known.ref = fresh.version, fresh.ref
            self._changed()

    def remove(self, key: str) -> None:
        """Forget a key (deleted, purged, or expired from the bucket)."""
        self._seen.pop(key, None)
        place = self._place_of.pop(key, None)
        if place is not None:
            self._detach(key, place)

    def _detach(self, key: str, place: _Place) -> None:
        entry = self._places.get(place)
        if entry is None:
            return
        entry.keys.discard(key)
        if entry.keys:
            return
        del self._places[place]
        gone = entry.upstream
        group = self._models if gone.kind == "model" else self._services
        for name in _names(gone):
            members = [u for u in group.get(name, []) if u is not gone]
            if members:
                group[name] = members
            else:
                group.pop(name, None)
        self._changed()
        log.info("instance %s at %s left", key, gone.label)
        if self._on_removed is not None:
            self._on_removed(gone)

    def keys(self) -> set[str]:
        """The discovery keys the table holds."""
        return set(self._seen)

    def touch_all(self, now: float) -> None:
        """Count every key as seen ``now`` (after an outage of the bus)."""
        for key in self._seen:
            self._seen[key] = now

    def expire(self, now: float, older_than_s: float) -> None:
        """Forget keys not refreshed for ``older_than_s`` (a missed expiry marker)."""
        for key, seen in list(self._seen.items()):
            if now - seen > older_than_s:
                self.remove(key)

    def _changed(self) -> None:
        self._targets.clear()
        self.generation += 1

    def match(self, name: str, version: str | None) -> Target | None:
        """The instances serving ``name`` (at ``version``: a number, or an alias they follow)."""
        key = (name, version)
        try:
            return self._targets[key]
        except KeyError:
            pass
        target = self._match(name, version)
        if len(self._targets) < 4096:  # a client inventing names must not grow this forever
            self._targets[key] = target
        return target

    def _match(self, name: str, version: str | None) -> Target | None:
        instances = self._models.get(name)
        if not instances:
            return None
        if version is None:
            return Target(name, tuple(instances), None)
        if version.isdigit():
            found = tuple(u for u in instances if u.version == version)
            return Target(name, found, version) if found else None
        # An alias: instances following it serve its current version, whatever the number.
        ref = f"{name}@{version}"
        found = tuple(u for u in instances if u.ref == ref)
        return Target(name, found, None) if found else None

    def services(self, name: str) -> Sequence[Upstream]:
        """Instances answering ``/api/<name>``: the service ``name`` (e.g. ``registry``), or
        one that announced ``name`` among its APIs (the registry, for a record kind)."""
        return self._services.get(name, ())

    def api_services(self) -> dict[str, Upstream]:
        """One instance of each service proxied under ``/api/<name>``, by service name."""
        return {
            name: members[0]
            for name, members in self._services.items()
            if members and members[0].name == name
        }

    def models(self) -> dict[str, list[Upstream]]:
        """Every served model and its instances."""
        return {name: list(members) for name, members in self._models.items()}


def _names(upstream: Upstream) -> tuple[str, ...]:
    """The names an instance is found under: its own, and a service's other APIs."""
    if upstream.kind == "model":
        return (upstream.name,)
    return (upstream.name, *(a for a in upstream.apis if a != upstream.name))


class Router:
    """Finds the :class:`Target` of a model request, or says why there is none."""

    def __init__(self, table: RoutingTable, catalog: ModelCatalog) -> None:
        self.table = table
        self.catalog = catalog

    async def target(self, name: str, version: str | None) -> Target:
        """The instances for ``name`` (``version``), or 404 / ``NoInstance`` errors."""
        found = self.table.match(name, version)
        if found is not None:
            return found
        what = f"model {name!r}" + (f" version {version!r}" if version else "")
        # What cannot be a name is not one: no need to ask (nor to build a URL from it).
        if not MODEL_NAME.fullmatch(name):
            raise ModelNotFound(f"no model named {name!r}", name=name)
        if version is not None and not VERSION_REF.fullmatch(version):
            raise VersionNotFound(f"model {name!r} has no version {version!r}", model=name)
        try:
            number = await self.catalog.lookup(name, version)
        except StoreUnavailable as exc:
            raise NoInstance(
                f"no running instance serves {what}, and the registry cannot be asked: "
                f"{exc.message}",
                model=name,
            ) from exc
        if number is not None and number != version:
            found = self.table.match(name, number)
            if found is not None:
                return found
            what += f" (version {number})"
        raise NoInstance(
            f"{what} is in the registry, but no running instance serves it",
            model=name,
            version=number or version,
        )

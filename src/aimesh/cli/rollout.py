"""``aimesh rollout``: canaries, A/B splits and shadows of a model's versions.

Each command reads and writes the model's ``rollout`` record in the registry (the same
operations as ``/api/rollouts`` through the gateway); gateways follow the record within a
second, and the controller (``aimesh controller``, run by ``aimesh up``) moves canaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from aimesh.cli._app import console, handle_errors, settings
from aimesh.cli.models import JsonFlag, _registry
from aimesh.config import Settings
from aimesh.errors import AimeshError, InvalidRequest, RecordNotFound
from aimesh.registry import ROLLOUTS, Record, Registry
from aimesh.rollouts import (
    FIGURES_EVERY_S,
    FIGURES_SUBJECT,
    FINISHED,
    Canary,
    Policy,
    Report,
    Rollout,
    Shadow,
    Split,
    Sticky,
    Tally,
    started,
)

app = typer.Typer(
    help="Canary rollouts, A/B splits and shadow traffic of a model's versions.",
    no_args_is_help=True,
)

Model = Annotated[str, typer.Argument(help="Model name.")]
StickyHeader = Annotated[
    str | None,
    typer.Option("--sticky-header", help="Keep each user on one version by this header."),
]
StickyCookie = Annotated[
    str | None,
    typer.Option("--sticky-cookie", help="Keep each user on one version by this cookie."),
]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(text: str) -> float:
    found = _DURATION.match(text)
    if found is None:
        raise InvalidRequest(f"{text!r} is not a duration (e.g. 60s, 2m, 500ms)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _sticky(header: str | None, cookie: str | None) -> Sticky | None:
    if header is None and cookie is None:
        return None
    return Sticky(header=header, cookie=cookie)


def _begin(registry: Registry, model: str, policy: Policy) -> Record[Rollout]:
    """Store a new rollout of ``policy`` on ``model``: created, or replacing a finished one."""
    rollout = started(model, policy, _actor(), datetime.now(UTC))
    try:
        current = registry.get_record(ROLLOUTS, model)
    except RecordNotFound:
        return registry.create_record(ROLLOUTS, model, rollout)
    return registry.replace_record(ROLLOUTS, model, rollout, revision=current.revision)


@app.command()
@handle_errors
def start(
    model: Model,
    candidate: Annotated[int, typer.Option(help="The version on trial.")],
    alias: Annotated[str, typer.Option(help="The alias whose traffic it takes.")] = "champion",
    steps: Annotated[str, typer.Option(help="Percent at each step; the last is 100.")] = (
        "5,25,50,100"
    ),
    interval: Annotated[str, typer.Option(help="How long each step is judged: 60s, 2m.")] = "60s",
    max_error_rate: Annotated[float, typer.Option(help="Largest error rate, 0..1.")] = 0.01,
    max_p99_ratio: Annotated[float, typer.Option(help="Largest p99 / baseline p99.")] = 1.2,
    min_requests: Annotated[int, typer.Option(help="Requests needed to judge a step.")] = 200,
    max_inconclusive: Annotated[
        int, typer.Option(help="Inconclusive steps in a row before a pause.")
    ] = 3,
    sticky_header: StickyHeader = None,
    sticky_cookie: StickyCookie = None,
) -> None:
    """Start a canary: CANDIDATE takes a growing share of ALIAS's traffic.

    Each step is judged against the version ALIAS holds by the rollout controller:
    promoted after the last step, rolled back on errors or slowness.
    """
    try:
        percents = [int(p) for p in steps.split(",")]
    except ValueError as exc:
        raise InvalidRequest(f"steps {steps!r} must be whole percents, e.g. 5,25,50,100") from exc
    with _registry(publishes=True) as registry:
        baseline = registry.get_version(model, alias).version
        policy = Canary(
            alias=alias, baseline=baseline, candidate=candidate, steps=percents,
            interval_s=_seconds(interval), max_error_rate=max_error_rate,
            max_p99_ratio=max_p99_ratio, min_requests=min_requests,
            max_inconclusive=max_inconclusive, sticky=_sticky(sticky_header, sticky_cookie),
        )  # fmt: skip
        record = _begin(registry, model, policy)
    _print(record)


@app.command()
@handle_errors
def ab(
    model: Model,
    split: Annotated[str, typer.Option(help="VERSION=PERCENT,... summing to 100, e.g. 4=50,5=50.")],
    sticky_header: StickyHeader = None,
    sticky_cookie: StickyCookie = None,
) -> None:
    """Start an A/B test: fixed shares of the model's requests by version."""
    weights: dict[int, int] = {}
    for part in split.split(","):
        version, sep, weight = part.partition("=")
        if not sep or not version.strip().isdigit() or not weight.strip().isdigit():
            raise InvalidRequest(f"{part!r} must look like VERSION=PERCENT, e.g. 4=50")
        weights[int(version)] = int(weight)
    policy = Split(weights=weights, sticky=_sticky(sticky_header, sticky_cookie))
    with _registry(publishes=True) as registry:
        record = _begin(registry, model, policy)
    _print(record)


@app.command()
@handle_errors
def shadow(
    model: Model,
    candidate: Annotated[int, typer.Option(help="The version that gets the copies.")],
    percent: Annotated[float, typer.Option(help="Percent of requests copied.")] = 100.0,
) -> None:
    """Mirror live traffic to CANDIDATE: its answers are compared, never returned."""
    with _registry(publishes=True) as registry:
        record = _begin(registry, model, Shadow(candidate=candidate, percent=percent))
    _print(record)


def _act(model: str, action: str) -> None:
    """One of the rollout kind's actions, as ``POST /api/rollouts/{model}/actions/...``."""
    with _registry(publishes=True) as registry:
        record = registry.act_on_record(ROLLOUTS, model, action)
    _print(record)


@app.command()
@handle_errors
def pause(model: Model) -> None:
    """Hold a canary at its step (its weight stays; nothing is judged)."""
    _act(model, "pause")


@app.command()
@handle_errors
def resume(model: Model) -> None:
    """Judge a paused canary again, from now."""
    _act(model, "resume")


@app.command()
@handle_errors
def abort(model: Model) -> None:
    """End a rollout now: the candidate gets no more requests, the alias stays."""
    _act(model, "abort")


@app.command()
@handle_errors
def promote(model: Model) -> None:
    """Promote a canary's candidate now: the alias moves to it."""
    _act(model, "promote")


@app.command()
@handle_errors
def status(
    model: Model,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Where a rollout stands: its policy, step and weights, and the decision log."""
    config = settings()
    with _registry() as registry:
        if json_out:
            console.print_json(registry.get_record(ROLLOUTS, model).model_dump_json())
            return
        record = registry.get_record(ROLLOUTS, model)
        before, after = _hear_figures(config)
        if not watch:
            console.print(_view(record, _figures_table(record.spec, before, after)))
            return
        with Live(_view(record), console=console) as live:
            while True:
                record = registry.get_record(ROLLOUTS, model)
                live.update(_view(record, _figures_table(record.spec, before, after)))
                if record.spec.status.state in FINISHED:
                    return
                before, after = after, _hear_figures(config)[1]


@app.command("list")
@handle_errors
def list_rollouts(json_out: JsonFlag = False) -> None:
    """Every model's traffic policy."""
    with _registry() as registry:
        records = registry.list_records(ROLLOUTS, limit=1000)
    if json_out:
        console.print_json(json.dumps([json.loads(r.model_dump_json()) for r in records]))
        return
    table = Table("model", "policy", "state", "weights", "updated", "by", title="rollouts")
    for record in records:
        rollout = record.spec
        table.add_row(
            record.name, rollout.policy.type, rollout.status.state, _weights(rollout),
            record.updated_at.strftime("%Y-%m-%d %H:%M:%S"), record.updated_by,
        )  # fmt: skip
    console.print(table)


@app.command()
@handle_errors
def history(
    model: Model,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many revisions.")] = 50,
) -> None:
    """Every change of the model's rollout record, newest first."""
    with _registry() as registry:
        revisions = registry.record_history(ROLLOUTS, model, limit=limit)
    table = Table("revision", "when", "change", "state", "weights", "by", title=f"{model}")
    for r in revisions:
        spec = r.spec
        table.add_row(
            str(r.revision), r.at.strftime("%Y-%m-%d %H:%M:%S"), r.action,
            spec.status.state if spec else "", _weights(spec) if spec else "", r.actor,
        )  # fmt: skip
    console.print(table)


@app.command()
@handle_errors
def delete(model: Model) -> None:
    """Remove the model's rollout record (its history stays): default routing again."""
    with _registry(publishes=True) as registry:
        registry.delete_record(ROLLOUTS, model)
    console.print(f"removed the rollout of {model}")


def _weights(rollout: Rollout) -> str:
    weights = rollout.weights()
    if isinstance(rollout.policy, Shadow):
        return f"copy {rollout.policy.percent:g}% to v{rollout.policy.candidate}"
    if not weights and isinstance(rollout.policy, Canary):
        return f"all to {rollout.policy.alias}"
    return ", ".join(f"v{v} {w}%" for v, w in sorted(weights.items()))


def _hear_figures(config: Settings) -> tuple[dict[str, Report], dict[str, Report]]:
    """The gateways' figures at the start and at the end of a second of listening (every
    gateway publishes once a second); empty when the bus cannot be reached."""
    from aimesh.bus import open_bus

    async def hear() -> tuple[dict[str, Report], dict[str, Report]]:
        tally = Tally()
        first: dict[str, Report] = {}
        try:
            async with await open_bus(config, name="aimesh-rollout", timeout=2.0) as bus:
                sub = await bus.nc.subscribe(f"{FIGURES_SUBJECT}.>")
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FIGURES_EVERY_S * 1.2):
                            async for msg in sub.messages:
                                tally.hear(msg.data)
                                if not first:
                                    first = tally.snapshot()
                finally:
                    await sub.unsubscribe()
        except AimeshError:
            return {}, {}
        return first, tally.snapshot()

    return asyncio.run(hear())


def _figures_table(
    rollout: Rollout, before: dict[str, Report], after: dict[str, Report]
) -> Table | None:
    """Each version's figures as the gateways count them: since they started, and the
    request rate over the last second."""
    if not after:
        return None
    versions = sorted({v for r in after.values() for v in r.models.get(rollout.model, {})})
    title = f"live figures ({len(after)} gateways)"
    table = Table("version", "requests", "req/s", "error rate", "client 4xx", "p99 ms",
                  "fallbacks", "shadow agreement", title=title)  # fmt: skip
    for version in versions:
        whole = Tally.interval({}, after, rollout.model, version)
        recent = Tally.interval(before, after, rollout.model, version)
        p99 = whole.quantile(0.99)
        rate = whole.error_rate
        agreement = whole.agreement
        table.add_row(
            version or "-", str(whole.requests), f"{recent.requests:g}",
            "-" if rate is None else f"{rate:.2%}", str(whole.client),
            "-" if p99 is None else f"{p99 * 1000:.1f}", str(whole.fallbacks),
            "-" if agreement is None else f"{agreement:.1%} of {whole.compared}",
        )  # fmt: skip
    return table


def _view(record: Record[Rollout], figures: Table | None = None) -> Group:
    rollout = record.spec
    policy = rollout.policy
    head = Table.grid(padding=(0, 2))
    head.add_row("model", rollout.model)
    head.add_row("policy", f"{policy.type} (revision {record.revision})")
    head.add_row("state", rollout.status.state)
    head.add_row("weights", _weights(rollout))
    if isinstance(policy, Canary):
        head.add_row("step", f"{rollout.status.step + 1} of {len(policy.steps)} ({policy.steps})")
        head.add_row("versions", f"baseline {policy.baseline} ({policy.alias}), "
                                 f"candidate {policy.candidate}")  # fmt: skip
        head.add_row("thresholds", f"errors <= {policy.max_error_rate:.2%}, p99 <= "
                     f"{policy.max_p99_ratio:g}x, >= {policy.min_requests} requests per "
                     f"{policy.interval_s:g}s")  # fmt: skip
    log = Table("when", "decision", "weight", "reason", "by", title="decisions")
    for d in rollout.status.decisions:
        log.add_row(d.at.strftime("%H:%M:%S"), d.action, f"{d.weight}%", d.reason, d.actor)
    return Group(head, log) if figures is None else Group(head, figures, log)


def _print(record: Record[Rollout]) -> None:
    console.print(_view(record))

"""The benchmark's figures: one table per model, ratios to the baselines, target verdicts.

Every aimesh figure is set against the FastAPI baseline and the bare ASGI ceiling serving
the same model at the same concurrency. Both of those speak REST only, so aimesh's gRPC
rows are compared with them too: same model, same work, another protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
from _load import LoadResult
from _models import KINDS
from rich.console import Console
from rich.table import Table

TARGET_VS_FASTAPI = 2.0
TARGET_VS_BARE = 0.8


class System(msgspec.Struct, frozen=True):
    """A server configuration under test: which server, which protocol, batching or not."""

    server: str  # "fastapi", "bare" or "aimesh"
    protocol: str  # "rest" or "grpc"
    batching: bool | None = None  # aimesh only

    @property
    def label(self) -> str:
        """How the tables name it."""
        if self.server == "fastapi":
            return "FastAPI baseline"
        if self.server == "bare":
            return "bare ASGI ceiling"
        protocol = "REST" if self.protocol == "rest" else "gRPC"
        return f"aimesh {protocol} {'batch' if self.batching else 'no-batch'}"


FASTAPI = System("fastapi", "rest")
BARE = System("bare", "rest")
AIMESH = [
    System("aimesh", "rest", True),
    System("aimesh", "rest", False),
    System("aimesh", "grpc", True),
    System("aimesh", "grpc", False),
]
SYSTEMS = [FASTAPI, BARE, *AIMESH]
HEADLINE = AIMESH[0]
"""The configuration the target is about: ``aimesh serve`` as shipped (REST, batching on)."""


class Cell(msgspec.Struct):
    """One measurement: a model, a system, a concurrency, and what was seen."""

    model: str
    system: System
    concurrency: int
    result: LoadResult
    requests_per_call: float | None = None
    """aimesh with batching: requests coalesced into one model call, on average."""

    @property
    def other_cpu(self) -> float | None:
        """Cores that other processes used during the measurement: noise if well above 0."""
        r = self.result
        if r.machine_cpu < 0 or r.server_cpu < 0:
            return None
        return max(0.0, r.machine_cpu - r.server_cpu - r.client_cpu)


class Verdict(msgspec.Struct):
    """How one aimesh configuration fares against the target at one concurrency."""

    model: str
    system: System
    concurrency: int
    rps: float
    vs_fastapi: float
    p99_ms: float
    fastapi_p99_ms: float
    vs_bare: float

    @property
    def throughput_ok(self) -> bool:
        """At least twice the FastAPI baseline's throughput."""
        return self.vs_fastapi >= TARGET_VS_FASTAPI

    @property
    def p99_ok(self) -> bool:
        """A p99 no worse than the baseline's."""
        return self.p99_ms <= self.fastapi_p99_ms

    @property
    def ceiling_ok(self) -> bool:
        """At least 0.8 of the bare ceiling's throughput."""
        return self.vs_bare >= TARGET_VS_BARE

    @property
    def met(self) -> bool:
        """All three."""
        return self.throughput_ok and self.p99_ok and self.ceiling_ok


def _find(cells: Iterable[Cell], model: str, system: System, concurrency: int) -> Cell | None:
    for cell in cells:
        if cell.model == model and cell.system == system and cell.concurrency == concurrency:
            return cell
    return None


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(b) else math.nan


def _num(value: float | None, fmt: str = ".0f", suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:{fmt}}{suffix}"


NOISY_CPU = 0.2
"""Cores used by other processes during a cell above which its figures are suspect."""


def _noise(other: float | None) -> str:
    text = _num(other, ".2f")
    return f"[yellow]{text}[/]" if other is not None and other > NOISY_CPU else text


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def print_tables(console: Console, cells: list[Cell]) -> None:
    """One table per model: a section per concurrency, a row per system."""
    for model in dict.fromkeys(c.model for c in cells):
        concurrencies = sorted({c.concurrency for c in cells if c.model == model})
        table = Table(
            title=f"{KINDS[model]} (fraud demo model, 30 features, 1 row per request)",
            caption="vs FA, vs bare: req/s over FastAPI's, over the bare ceiling's, at the same "
            "concurrency; p99 vs FA: p99 over FastAPI's; req/call: requests per model call "
            "(aimesh batching); CPU: cores used by the server, the load generator, other "
            "processes. The baselines speak REST only: aimesh's gRPC rows are set against the "
            "same figures.",
        )
        table.add_column("c", justify="right")
        table.add_column("system", no_wrap=True)
        for name in ("req/s", "p50 ms", "p99 ms", "vs FA", "vs bare", "p99 vs FA", "req/call"):
            table.add_column(name, justify="right")
        for name in ("srv CPU", "cli CPU", "other CPU", "errors"):
            table.add_column(name, justify="right")
        for concurrency in concurrencies:
            base = _find(cells, model, FASTAPI, concurrency)
            bare = _find(cells, model, BARE, concurrency)
            rows = [c for s in SYSTEMS if (c := _find(cells, model, s, concurrency)) is not None]
            for i, cell in enumerate(rows):
                r = cell.result
                base_rps = base.result.rps if base else math.nan
                base_p99 = base.result.p99_ms if base else math.nan
                bare_rps = bare.result.rps if bare else math.nan
                table.add_row(
                    str(concurrency),
                    cell.system.label,
                    _num(r.rps),
                    _num(r.p50_ms, ".2f"),
                    _num(r.p99_ms, ".2f"),
                    _num(_ratio(r.rps, base_rps), ".2f"),
                    _num(_ratio(r.rps, bare_rps), ".2f"),
                    _num(_ratio(r.p99_ms, base_p99), ".2f"),
                    _num(cell.requests_per_call, ".1f"),
                    _num(r.server_cpu if r.server_cpu >= 0 else None, ".2f"),
                    _num(r.client_cpu, ".2f"),
                    _noise(cell.other_cpu),
                    f"[red]{r.errors}[/]" if r.errors else "0",
                    end_section=i == len(rows) - 1,
                )
        console.print(table)


def verdicts(cells: list[Cell], concurrency: int) -> list[Verdict]:
    """Each aimesh configuration against the target, at ``concurrency``, per model."""
    out: list[Verdict] = []
    for model in dict.fromkeys(c.model for c in cells):
        base = _find(cells, model, FASTAPI, concurrency)
        bare = _find(cells, model, BARE, concurrency)
        if base is None or bare is None:
            continue
        for system in AIMESH:
            cell = _find(cells, model, system, concurrency)
            if cell is None:
                continue
            out.append(
                Verdict(
                    model=model,
                    system=system,
                    concurrency=concurrency,
                    rps=cell.result.rps,
                    vs_fastapi=_ratio(cell.result.rps, base.result.rps),
                    p99_ms=cell.result.p99_ms,
                    fastapi_p99_ms=base.result.p99_ms,
                    vs_bare=_ratio(cell.result.rps, bare.result.rps),
                )
            )
    return out


def print_verdicts(console: Console, found: list[Verdict]) -> bool | None:
    """The target table; returns whether the headline configuration met it for every model."""
    if not found:
        console.print("[yellow]no verdict: the baselines or aimesh were not measured[/]")
        return None
    concurrency = found[0].concurrency
    table = Table(
        title=f"Target at concurrency {concurrency}: req/s ≥ {TARGET_VS_FASTAPI:g} FastAPI's, "
        f"p99 ≤ FastAPI's, req/s ≥ {TARGET_VS_BARE:g} the bare ceiling's",
        caption=f"The target is about the headline row ({HEADLINE.label}, as `aimesh serve` "
        "ships); the other rows are for information.",
    )
    table.add_column("model", no_wrap=True)
    table.add_column("aimesh", no_wrap=True)
    for name in ("req/s", "vs FastAPI", "p99 ms (FastAPI's)", "vs bare", "verdict"):
        table.add_column(name, justify="right", no_wrap=True)
    for v in found:
        label = f"[bold]{v.system.label}[/]" if v.system == HEADLINE else v.system.label
        table.add_row(
            KINDS[v.model],
            label,
            _num(v.rps),
            f"{_num(v.vs_fastapi, '.2f')} {_mark(v.throughput_ok)}",
            f"{_num(v.p99_ms, '.1f')} ({_num(v.fastapi_p99_ms, '.1f')}) {_mark(v.p99_ok)}",
            f"{_num(v.vs_bare, '.2f')} {_mark(v.ceiling_ok)}",
            "[green]met[/]" if v.met else "[red]not met[/]",
        )
    console.print(table)
    headlines = [v for v in found if v.system == HEADLINE]
    if not headlines:
        return None
    met = all(v.met for v in headlines)
    word = "[bold green]MET[/]" if met else "[bold red]NOT MET[/]"
    models = ", ".join(KINDS[v.model] for v in headlines)
    console.print(f"Target ({HEADLINE.label}, concurrency {concurrency}; {models}): {word}")
    return met


def print_noise(console: Console, cells: list[Cell]) -> None:
    """Say which cells other processes disturbed, if any."""
    noisy = [c for c in cells if (c.other_cpu or 0.0) > NOISY_CPU]
    if noisy:
        console.print(
            f"[yellow]{len(noisy)} of {len(cells)} cells ran while other processes used more "
            f"than {NOISY_CPU:g} of a core (the 'other CPU' column): their figures are noisy; "
            "run again on a quiet machine to confirm them.[/]"
        )


def print_errors(console: Console, cells: list[Cell]) -> None:
    """Every cell that saw errors, with its examples."""
    for cell in cells:
        if cell.result.errors:
            console.print(
                f"[red]{cell.result.errors} error(s)[/] in {KINDS[cell.model]}, "
                f"{cell.system.label}, concurrency {cell.concurrency}:"
            )
            for example in cell.result.error_examples:
                console.print(f"  {example}", markup=False, highlight=False)

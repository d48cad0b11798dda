"""The parts of ``aimesh up`` that need no process: the plan, the backoff, reading logs."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from aimesh.config import Settings
from aimesh.errors import ConfigError, NotFound
from aimesh.local import RestartPolicy, follow, log_files, plan_stack, tail_lines
from aimesh.runtimes import machine_cores


def _settings(tmp_path: Path, **services: object) -> Settings:
    return Settings(
        home=tmp_path / "home",
        registry={"port": 0},
        lake={"port": 0},
        jobs={"port": 0},
        gateway={"port": 0, "grpc_port": 0},
        services=services,
    )


def test_the_plan_starts_each_stage_in_order_on_distinct_ports(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, models=[{"ref": "fraud@champion", "replicas": 2, "batching": False}]
    )
    plan = plan_stack(settings)
    assert [(p.name, p.kind) for p in plan] == [
        ("registry", "registry"),
        ("lake", "lake"),
        ("jobs", "jobs"),
        ("fraud.1", "model"),
        ("fraud.2", "model"),
        ("worker-inference.1", "worker"),
        ("worker-training.1", "worker"),
        ("controller", "controller"),
        ("gateway", "gateway"),
    ]
    ports = [p.http_port for p in plan] + [p.grpc_port for p in plan if p.grpc_port]
    assert len(set(ports)) == len(ports) and 0 not in ports
    worker = plan[5]
    assert worker.args[:4] == ("worker", "inference", "--concurrency", "8")
    assert worker.ready_url == f"http://127.0.0.1:{worker.http_port}/health"
    assert plan[1].args[:2] == ("lake", "serve") and plan[2].args[:2] == ("jobs", "serve")
    replica = plan[3]
    assert replica.args[:2] == ("serve", "fraud@champion") and "--no-batching" in replica.args
    assert replica.ready_url == f"http://127.0.0.1:{replica.http_port}/v2/health/ready"
    assert replica.log_file == settings.home_dir / "logs" / "fraud.1.log"
    controller = plan[7]
    assert controller.args[:2] == ("controller", "--host") and controller.host == "127.0.0.1"
    assert controller.ready_url == f"http://127.0.0.1:{controller.http_port}/health"


def _option(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_plan_gives_a_model_service_one_thread_and_divides_the_cores_among_workers(
    tmp_path: Path,
) -> None:
    models = [{"ref": "fraud@champion", "replicas": 2}]
    plan = plan_stack(_settings(tmp_path, models=models))
    # two replicas and two job workers share the machine's cores
    share = str(max(1, machine_cores() // 4))
    assert [_option(p.args, "--threads") for p in plan if p.kind == "model"] == ["1"] * 2
    assert [_option(p.args, "--threads") for p in plan if p.kind == "worker"] == [share] * 2
    assert all("--threads" not in p.args for p in plan if p.kind not in ("model", "worker"))

    pinned = _settings(tmp_path, models=models).model_copy(
        update={"serving": Settings().serving.model_copy(update={"threads": 3})}
    )
    assert {_option(p.args, "--threads") for p in plan_stack(pinned) if p.kind == "model"} == {"3"}


def test_two_services_of_one_model_are_named_by_their_selector(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        registry=False,
        lake=False,
        jobs=False,
        controller=False,
        gateway=False,
        workers=[],
        models=[{"ref": "fraud@champion"}, {"ref": "fraud@challenger"}, {"ref": "churn"}],
    )
    assert [p.name for p in plan_stack(settings)] == [
        "fraud-champion.1",
        "fraud-challenger.1",
        "churn.1",
    ]


def test_workers_scale_by_replicas_and_a_kind_is_declared_once(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        registry=False, lake=False, jobs=False, controller=False, gateway=False,
        workers=[{"kind": "scoring", "replicas": 2, "handler": "mine:score"}],
    )  # fmt: skip
    plan = plan_stack(settings)
    assert [p.name for p in plan] == ["worker-scoring.1", "worker-scoring.2"]
    assert "--handler" in plan[0].args and plan[0].http_port != plan[1].http_port
    with pytest.raises(ValueError, match="kind training is declared twice"):
        _settings(tmp_path, workers=[{"kind": "training"}, {"kind": "training"}])
    with pytest.raises(ValueError, match="kind"):
        _settings(tmp_path, workers=[{"kind": "Bad Kind"}])


def test_a_model_declared_twice_is_a_config_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path, models=[{"ref": "fraud"}, {"ref": "fraud"}])
    with pytest.raises(ConfigError, match=r"services.models.1: fraud is declared twice"):
        plan_stack(settings)


def test_a_configured_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(home=tmp_path, registry={"port": port}, services={"gateway": False})
        with pytest.raises(
            ConfigError, match=rf"registry.port: port {port} on 127.0.0.1 is in use"
        ):
            plan_stack(settings)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)],
)
def test_restart_backoff_doubles_up_to_its_cap(failures: int, delay: float) -> None:
    assert RestartPolicy().delay(failures) == delay


def test_tail_reads_the_last_lines_of_a_big_log(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(20_000)))
    assert tail_lines(log, 3) == ["line 19997", "line 19998", "line 19999"]
    assert tail_lines(log, 0) == []
    assert tail_lines(tmp_path / "missing.log", 5) == []


def test_a_service_names_its_replicas_logs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("registry", "fraud.1", "fraud.2", "fraudster.1", "supervisor"):
        (logs / f"{name}.log").write_text("x\n")
    assert list(log_files(tmp_path, "fraud")) == ["fraud.1", "fraud.2"]
    assert list(log_files(tmp_path, "fraud.2")) == ["fraud.2"]
    assert "supervisor" not in log_files(tmp_path)
    with pytest.raises(NotFound, match="no log for 'ghost'"):
        log_files(tmp_path, "ghost")


def test_follow_yields_whole_lines_as_they_are_appended(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("old\n")
    lines = follow({"a": log}, poll_s=0.01)
    appended = threading.Event()

    def write() -> None:
        with log.open("a") as out:
            out.write("new 1\nnew ")
            out.flush()
            out.write("2\n")
        appended.set()

    threading.Thread(target=write).start()
    assert next(lines) == ("a", "new 1")
    assert next(lines) == ("a", "new 2")
    assert appended.wait(5)

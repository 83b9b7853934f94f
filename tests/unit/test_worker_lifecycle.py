"""The worker's load against a real (SQLite) database and a fake runtime: whatever the load raises, the replica
ends FAILED with a reason naming the exception, and the caller gets a typed error with the original as its cause."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from app import errors
from app.artifacts import sha256_of
from app.db import devices as device_rows
from app.db import replicas as replica_rows
from app.db.devices import DeviceInfo
from app.db.schema import Base, Model, ModelVersion
from app.db.session import get_engine, session_scope
from app.lifecycle import ReplicaState
from app.settings import Settings
from workers import lifecycle
from workers import runtimes as runtime_registry
from workers.context import WorkerContext

SIG = [{"name": "x", "datatype": "FP32", "shape": [-1]}]


class NVMLError(Exception):
    """Named like pynvml's base error, which is not a MaasError."""


class FakeRuntime:
    name = "fake"

    def __init__(self, fails_with: BaseException | None) -> None:
        self.fails_with = fails_with
        self.unloaded = False

    def load(self, artifact: Path, use_gpu: bool) -> None:
        if self.fails_with is not None:
            raise self.fails_with

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def unload(self) -> None:
        self.unloaded = True

    @property
    def device_label(self) -> str:
        return "fake:cpu"


class FakeConsumer:
    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.queues: list[str] = []

    def call_soon(self, fn, queue: str) -> None:
        if self.fails:
            raise ConnectionError("broker connection lost")
        self.queues.append(queue)

    # Named by WorkerContext.subscribe / unsubscribe and handed to call_soon; a real consumer runs them later.
    def add_task_queue(self, queue: str) -> None:
        pass

    def cancel_task_queue(self, queue: str) -> None:
        pass


@pytest.fixture
def worker(tmp_path):
    settings = Settings.from_env({"MAAS_HOME": str(tmp_path)})
    Base.metadata.create_all(get_engine(settings.sqlalchemy_url))
    artifact = tmp_path / "m.bin"
    artifact.write_bytes(b"weights")
    info = DeviceInfo(0, "virtual-test-0", "virtual device 0", "virtual", 1 << 30)
    with session_scope(settings.sqlalchemy_url) as session:
        model = Model(name="m")
        session.add(model)
        session.flush()
        version = ModelVersion(
            model_id=model.id,
            version=1,
            artifact_uri=artifact.as_uri(),
            sha256=sha256_of(artifact),
            size_bytes=artifact.stat().st_size,
            runtime="fake",
            inputs=SIG,
            outputs=SIG,
            mem_bytes=1,
        )
        session.add(version)
        session.flush()
        device = device_rows.register(session, "w0@test", "host", info)
        device_id, version_id, epoch = device.id, version.id, device.epoch
    ctx = WorkerContext(settings, "w0@test", info, device_id, epoch=epoch)
    ctx.consumer = FakeConsumer()

    def new_replica() -> int:
        with session_scope(settings.sqlalchemy_url) as session:
            return replica_rows.create(session, version_id, device_id).id

    return ctx, new_replica


def use_runtime(monkeypatch, runtime: FakeRuntime) -> None:
    monkeypatch.setattr(runtime_registry, "create", lambda name: runtime)


def replica_row(ctx: WorkerContext, replica_id: int) -> tuple[str, str]:
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        replica = replica_rows.get(session, replica_id)
        return replica.state, replica.reason


def test_a_load_that_works_is_ready_held_and_consumed(worker, monkeypatch):
    ctx, new_replica = worker
    use_runtime(monkeypatch, FakeRuntime(None))
    info = lifecycle.load(ctx, new_replica())
    assert info["state"] == ReplicaState.READY
    assert ctx.cache.get("m", 1) is not None and ctx.consumer.queues == ["m.m"]


@pytest.mark.parametrize(
    "exc",
    [OSError(5, "Input/output error"), NVMLError("NVML_ERROR_GPU_IS_LOST"), RuntimeError("CUDA driver init failed")],
    ids=lambda e: type(e).__name__,
)
def test_any_exception_fails_the_replica_and_is_raised_typed_with_its_cause(worker, monkeypatch, caplog, exc):
    ctx, new_replica = worker
    use_runtime(monkeypatch, FakeRuntime(exc))
    replica_id = new_replica()
    with caplog.at_level(logging.ERROR, "maas.worker"), pytest.raises(errors.LoadFailed) as info:
        lifecycle.load(ctx, replica_id)
    assert info.value.__cause__ is exc
    state, reason = replica_row(ctx, replica_id)
    assert state == ReplicaState.FAILED
    assert reason.startswith(f"{type(exc).__name__}: ") and str(exc) in reason
    logged = [r for r in caplog.records if getattr(r, "event", None) == "load_failed"]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[1] is exc  # with its traceback
    assert ctx.cache.get("m", 1) is None


def test_a_typed_error_is_raised_as_it_is(worker, monkeypatch):
    ctx, new_replica = worker
    oom = errors.OutOfMemory("ONNX Runtime cannot load m.onnx: out of memory")
    use_runtime(monkeypatch, FakeRuntime(oom))
    replica_id = new_replica()
    with pytest.raises(errors.OutOfMemory) as info:
        lifecycle.load(ctx, replica_id)
    assert info.value is oom
    assert replica_row(ctx, replica_id) == (ReplicaState.FAILED, str(oom))


def test_a_failure_after_the_runtime_is_built_releases_it(worker, monkeypatch):
    ctx, new_replica = worker
    runtime = FakeRuntime(None)
    use_runtime(monkeypatch, runtime)
    ctx.consumer = FakeConsumer(fails=True)
    replica_id = new_replica()
    with pytest.raises(errors.LoadFailed, match="ConnectionError: broker connection lost"):
        lifecycle.load(ctx, replica_id)
    assert replica_row(ctx, replica_id)[0] == ReplicaState.FAILED
    assert ctx.cache.get("m", 1) is None and runtime.unloaded


def test_drain_then_unload_stops_the_replica_and_releases_the_runtime(worker, monkeypatch):
    ctx, new_replica = worker
    runtime = FakeRuntime(None)
    use_runtime(monkeypatch, runtime)
    replica_id = new_replica()
    lifecycle.load(ctx, replica_id)
    info, unload_next = lifecycle.drain(ctx, replica_id)
    assert info["state"] == ReplicaState.DRAINING and unload_next
    assert lifecycle.unload(ctx, replica_id)["state"] == ReplicaState.STOPPED
    assert runtime.unloaded and ctx.cache.get("m", 1) is None


def test_a_footprint_below_the_artifact_size_is_never_recorded():
    from workers.lifecycle import plausible_footprint

    mib = 1024**2
    assert plausible_footprint(300 * mib, 100 * mib, 264 * mib) == 300 * mib  # measured and plausible: kept
    assert plausible_footprint(100 * mib, 100 * mib, 264 * mib) == 100 * mib
    # 0.0 MiB (ONNX Runtime already loaded) or negative (another model freed meanwhile): the declared figure
    assert plausible_footprint(0, 100 * mib, 264 * mib) == 264 * mib
    assert plausible_footprint(-5 * mib, 100 * mib, 264 * mib) == 264 * mib
    # a declared figure below the artifact's size is not plausible either
    assert plausible_footprint(0, 100 * mib, 10 * mib) == 100 * mib


def test_a_load_that_measures_nothing_records_the_declared_footprint_and_says_why(worker, monkeypatch, caplog):
    ctx, new_replica = worker
    use_runtime(monkeypatch, FakeRuntime(None))
    monkeypatch.setattr(lifecycle, "used_bytes", lambda kind, index: 1000)  # the same before and after: 0 bytes
    with caplog.at_level(logging.WARNING, "maas.worker"):
        info = lifecycle.load(ctx, new_replica())
    assert info["footprint_bytes"] == len(b"weights")  # the artifact's size (declared 1 byte is below it)
    logged = [r for r in caplog.records if getattr(r, "event", None) == "footprint_implausible"]
    assert len(logged) == 1 and logged[0].measured_bytes == 0


def declare_lost(ctx: WorkerContext) -> int:
    """What the reaper does to the row of a worker it cannot hear: LOST, its replicas FAILED, a new epoch."""
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        device = device_rows.by_worker(session, ctx.worker_name)
        assert device is not None
        device.status = "lost"
        device.epoch += 1
        replica_rows.fail_all_on_device(session, device, "worker lost: no heartbeat")
        return device.epoch


def test_a_worker_declared_lost_while_cut_off_is_fenced_until_it_reconciles(worker, monkeypatch):
    from workers import fencing

    ctx, new_replica = worker
    runtime = FakeRuntime(None)
    use_runtime(monkeypatch, runtime)
    held = new_replica()
    lifecycle.load(ctx, held)
    lost_at = declare_lost(ctx)

    # Its heartbeat does not bring the row back, it may not move a replica, and the fence says so
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        assert not device_rows.heartbeat(session, ctx.worker_name, epoch=ctx.epoch)
        assert device_rows.by_worker(session, ctx.worker_name).status == "lost"
    with pytest.raises(errors.Fenced):
        lifecycle.load(ctx, new_replica())
    assert fencing.is_fenced(ctx, lost_at)

    # Reconciling drops the replaced replica from memory, cancels its queue, and registers a new life
    done = fencing.reconcile(ctx, "test")
    assert done["dropped"] == [held] and runtime.unloaded and ctx.cache.get("m", 1) is None
    assert ctx.consumer.queues == ["m.m", "m.m"]  # subscribed at load, cancelled at reconcile
    assert ctx.epoch > lost_at and not fencing.is_fenced(ctx, lost_at)
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        assert device_rows.heartbeat(session, ctx.worker_name, epoch=ctx.epoch)
        assert device_rows.by_worker(session, ctx.worker_name).status == "online"
    assert lifecycle.load(ctx, new_replica())["state"] == ReplicaState.READY

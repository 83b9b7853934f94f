"""Device rows: registration by workers, heartbeats, and the liveness view used by placement and the reaper."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.schema import Device, utcnow
from app.lifecycle import DeviceStatus


@dataclass(frozen=True)
class DeviceInfo:
    """What a worker knows about the device it is pinned to (from NVML, or declared)."""

    index: int
    uuid: str
    name: str
    kind: str  # gpu | virtual
    mem_bytes: int


def register(session: Session, worker_name: str, host: str, info: DeviceInfo) -> Device:
    """Insert or refresh the device row of a starting worker."""
    # Locked: the reaper bumps the same epoch; two read-then-writes could otherwise both land on the same value.
    device = session.scalars(select(Device).where(Device.worker_name == worker_name).with_for_update()).first()
    if device is None:
        device = Device(worker_name=worker_name)
        session.add(device)
    device.host, device.index, device.uuid, device.name = host, info.index, info.uuid, info.name
    device.kind, device.mem_bytes, device.status = info.kind, info.mem_bytes, DeviceStatus.ONLINE.value
    device.started_at = device.heartbeat_at = utcnow()
    device.epoch = (device.epoch or 0) + 1
    session.flush()
    return device


def heartbeat(
    session: Session, worker_name: str, telemetry: dict[str, Any] | None = None, epoch: int | None = None
) -> bool:
    """Stamp the row of a live worker; False (nothing written) when ``epoch`` is not the row's: the worker was
    declared lost since it registered, and must not bring its row back to life (see workers.fencing)."""
    device = session.scalars(select(Device).where(Device.worker_name == worker_name).with_for_update()).first()
    if device is None:
        return True
    if epoch is not None and device.epoch != epoch:
        return False
    device.heartbeat_at = utcnow()
    device.status = DeviceStatus.ONLINE.value
    for key, value in (telemetry or {}).items():
        setattr(device, key, value)
    return True


def mark(session: Session, worker_name: str, status: DeviceStatus) -> None:
    device = session.scalars(select(Device).where(Device.worker_name == worker_name)).first()
    if device is not None:
        device.status = DeviceStatus(status).value  # also checks a plain string names a status


def by_worker(session: Session, worker_name: str) -> Device | None:
    return session.scalars(select(Device).where(Device.worker_name == worker_name)).first()


def all_devices(session: Session) -> list[Device]:
    return list(session.scalars(select(Device).order_by(Device.host, Device.index, Device.worker_name)))


def as_utc(when: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were written in UTC.
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def is_alive(device: Device, heartbeat_timeout_s: float, now: dt.datetime | None = None) -> bool:
    silent_s = ((now or utcnow()) - as_utc(device.heartbeat_at)).total_seconds()
    return device.status == DeviceStatus.ONLINE and silent_s <= heartbeat_timeout_s

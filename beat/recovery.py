"""Finding accepted requests that no worker holds and no queue keeps, and sending them again (see app.broker.ledger)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from app import logs
from app.broker import ledger, stats
from app.broker.clients import for_settings
from app.celery_app import settings_of

log = logging.getLogger("maas.beat")


def recover(app: Celery) -> dict[str, int]:
    settings = settings_of(app)
    client = for_settings(settings)

    def resend(task_id: str, body: dict[str, Any]) -> None:
        app.send_task(
            body["name"],
            args=body["args"],
            kwargs=body.get("kwargs") or {},
            queue=body["queue"],
            priority=body["priority"],
            headers=body.get("headers") or {},
            task_id=task_id,
        )
        stats.count_fleet_event(client, "ledger_resent")
        logs.event(
            log,
            "request_resent",
            logging.WARNING,
            task_id=task_id,
            queue=body["queue"],
            reason="accepted, unanswered, and found in no queue and held by no worker in two sweeps",
        )

    # Younger entries are most likely between publish and pop, or between pop and kombu's unacked record.
    verdict = ledger.sweep(
        client, min_age_s=2 * settings.reap_period_s, max_age_s=settings.result_expires_s, resend=resend
    )
    return {"done": len(verdict.done), "resent": len(verdict.lost), "suspect": len(verdict.suspect)}

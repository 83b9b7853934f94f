"""Module-level Celery app for ``celery -A app.flower_app flower`` (Flower needs an importable app).

Built from the same settings as workers and producers, so Flower reads the same priority lists.
"""

from app.celery_app import create_app

app = create_app()

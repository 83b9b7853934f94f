"""The in-process model cache of one worker: which versions it holds, and their runtimes and signatures."""

from __future__ import annotations

from dataclasses import dataclass

from app.signature import TensorSpec
from workers.runtimes.base import Runtime


@dataclass
class Loaded:
    replica_id: int
    model: str
    version: int
    runtime: Runtime
    inputs: tuple[TensorSpec, ...]
    footprint_bytes: int  # weights and, for a generative model, the KV cache it may grow to
    max_batch_size: int = 1  # dynamic batching: up to this many waiting requests per runtime call
    max_queue_delay_s: float = 0.0  # how long a batch may wait to fill
    max_request_bytes: int | None = None  # the model's size limits when it loaded; None: the fleet's settings
    max_result_bytes: int | None = None
    kv_cache_bytes: int = 0  # of the footprint: the KV cache a generative replica may grow to


class ModelCache:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], Loaded] = {}

    def put(self, loaded: Loaded) -> None:
        self._by_key[(loaded.model, loaded.version)] = loaded

    def pop(self, model: str, version: int) -> Loaded | None:
        return self._by_key.pop((model, version), None)

    def get(self, model: str, version: int | None) -> Loaded | None:
        """The exact version, or with ``version=None`` the newest version of the model held here."""
        if version is not None:
            return self._by_key.get((model, version))
        held = [v for (m, v) in self._by_key if m == model]
        return self._by_key[(model, max(held))] if held else None

    def all(self) -> list[Loaded]:
        return list(self._by_key.values())

    def versions_of(self, model: str) -> list[int]:
        return sorted(v for (m, v) in self._by_key if m == model)

    def __len__(self) -> int:
        return len(self._by_key)

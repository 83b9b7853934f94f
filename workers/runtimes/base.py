"""The one small interface every runtime implements: load, infer, unload."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    #: Name a version's ``runtime`` column uses.
    name: str

    def load(self, artifact: Path, use_gpu: bool) -> None:
        """Build the in-memory session from a verified artifact.

        Failures leave as MaasErrors, classified by ``workers.runtimes.failures``: CorruptArtifact when it cannot be
        parsed, OutOfMemory when the device or host cannot hold it, MissingDependency when a package is missing.
        """

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request; inputs already validated against the signature."""

    def unload(self) -> None:
        """Release every reference to the session so its memory can be returned."""

    @property
    def device_label(self) -> str:
        """Where it actually runs (e.g. CUDAExecutionProvider, CPUExecutionProvider)."""

"""Python entry points: a model that is a function in an installed package, named by the operator.

The artifact is a small JSON file (registered, so content-addressed and sha256-checked like any other)::

    {"entrypoint": "mypkg.models:predict",     # module:attribute, attribute may be dotted (Class.method)
     "factory": false,                         # true: call it once at load with "options" to get the predictor
     "options": {},                            # JSON keyword arguments for the factory
     "inputs": [...], "outputs": [...]}        # optional signature, used by the registry when none is given

The predictor takes ``{name: ndarray}`` and returns ``{name: array-like}``. Importing a module runs its code, so the
module must be under a prefix the operator allowed on the worker (``MAAS_ENTRYPOINT_ALLOW``, comma-separated, empty
by default: entry points are off until an operator turns them on). The check happens before the import, and again on
the object found, so a re-export (``from os import system``) in an allowed module is refused too. Requests never name
code: they only reach the version the registry recorded.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ArtifactError, CorruptArtifact, LoadFailed, ModelExecutionError, UntrustedArtifact
from workers.runtimes.failures import translated

#: Environment variable holding the module prefixes entry points may be imported from.
ALLOW_VAR = "MAAS_ENTRYPOINT_ALLOW"
#: Largest entry-point file read; it names code, it does not hold weights.
MAX_SPEC_BYTES = 64 * 1024
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KEYS = {"entrypoint", "factory", "options", "inputs", "outputs", "description"}


@dataclass(frozen=True)
class EntryPointSpec:
    module: str
    attr: str
    factory: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] | None = None
    outputs: list[dict[str, Any]] | None = None

    @property
    def target(self) -> str:
        return f"{self.module}:{self.attr}"


def allowed_prefixes() -> tuple[str, ...]:
    """The operator's allow-list on this worker (MAAS_ENTRYPOINT_ALLOW, read through the typed settings)."""
    from app.settings import Settings

    return Settings.from_env().entrypoint_allow


def module_allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    # On dotted boundaries: "mypkg" allows "mypkg.models" but not "mypkgevil".
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def parse_spec(raw: bytes | str) -> EntryPointSpec:
    """Validate the JSON artifact (no import, no allow-list: the registry runs this where workers' settings differ)."""
    if len(raw) > MAX_SPEC_BYTES:
        raise CorruptArtifact(f"entry-point file is {len(raw)} bytes; it must be a small JSON object")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptArtifact(f"entry-point file is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("entrypoint"), str):
        raise CorruptArtifact('entry-point file must be a JSON object with "entrypoint": "module:callable"')
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise CorruptArtifact(f"entry-point file has unknown keys {unknown} (known: {sorted(_KEYS)})")
    module, sep, attr = doc["entrypoint"].partition(":")
    if not (sep and _DOTTED.match(module) and _DOTTED.match(attr)):
        raise CorruptArtifact(f"entrypoint {doc['entrypoint']!r} must be 'package.module:callable'")
    if any(part.startswith("_") for part in attr.split(".")):
        # Private and dunder attributes are how a path walks out of a module (__globals__, __builtins__...).
        raise CorruptArtifact(f"entrypoint {doc['entrypoint']!r}: private attributes cannot be entry points")
    options = doc.get("options", {})
    if not isinstance(options, dict) or not isinstance(doc.get("factory", False), bool):
        raise CorruptArtifact('entry-point "options" must be an object and "factory" a boolean')
    return EntryPointSpec(module, attr, doc.get("factory", False), options, doc.get("inputs"), doc.get("outputs"))


def resolve(spec: EntryPointSpec, prefixes: tuple[str, ...]) -> Callable[..., Any]:
    """Import and return the named object, after checking the allow-list; raise ArtifactError otherwise."""
    if not module_allowed(spec.module, prefixes):
        allowed = ", ".join(prefixes) or f"none; set {ALLOW_VAR} on the worker"
        raise UntrustedArtifact(f"entry point {spec.target} refused: module not on the allow-list ({allowed})")
    # ImportError: MissingDependency; the module's own code raising on import: LoadFailed.
    with translated(f"entry point {spec.target}: cannot import {spec.module}", LoadFailed):
        obj: Any = importlib.import_module(spec.module)
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            raise ArtifactError(f"entry point {spec.target}: {spec.module} has no attribute {spec.attr!r}")
        obj = getattr(obj, part)
    home = getattr(obj, "__module__", None) or ""
    if not module_allowed(home, prefixes):
        raise UntrustedArtifact(f"entry point {spec.target} refused: it is defined in {home or 'unknown'}, not allowed")
    if not callable(obj):
        raise ArtifactError(f"entry point {spec.target} is not callable")
    predictor: Callable[..., Any] = obj
    return predictor


class EntryPointRuntime:
    name = "entrypoint"

    def __init__(self) -> None:
        self._predict: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None
        self._target = ""

    def load(self, artifact: Path, use_gpu: bool) -> None:
        spec = parse_spec(artifact.read_bytes())
        obj = resolve(spec, allowed_prefixes())
        if spec.factory:
            with translated(f"entry point factory {spec.target} raised", ModelExecutionError):
                obj = obj(**spec.options)
            if not callable(obj):
                raise ArtifactError(f"entry point factory {spec.target} returned a non-callable {type(obj).__name__}")
        self._predict, self._target = obj, spec.target

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._predict is not None, "infer before load"
        # A MaasError passes unchanged: the entry point chose the error (e.g. InvalidInput); keep its code.
        with translated(f"{self._target} raised", ModelExecutionError):
            result = self._predict(inputs)
        if not isinstance(result, Mapping):
            raise ModelExecutionError(f"{self._target} returned {type(result).__name__}, not a mapping name -> array")
        return {str(name): np.asarray(value) for name, value in result.items()}

    def unload(self) -> None:
        self._predict = None

    @property
    def device_label(self) -> str:
        return f"python:{self._target}" if self._predict is not None else "unloaded"

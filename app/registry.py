"""The model registry: models, immutable versions, aliases, and resolving a reference to a version.

A reference is ``name`` (the ``prod`` alias if set, else the latest version), ``name:3`` (version 3) or
``name@alias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.artifacts import ArtifactStore
from app.broker.layout import check_model_name
from app.db.schema import Model, ModelAlias, ModelVersion
from app.errors import RegistryError, UnknownAlias, UnknownModel, UnknownRuntime, UnknownVersion
from app.policies import Policy
from app.signature import parse_signature

#: Runtimes a version may name. Each maps to an implementation in ``workers/runtimes``.
RUNTIMES = ("onnx", "torchscript", "skops", "entrypoint", "sentence_transformers", "causal_lm")
#: The alias a bare model name resolves to, when set.
DEFAULT_ALIAS = "prod"
_ALIAS_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class Ref:
    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return self.model + (f":{self.version}" if self.version else "") + (f"@{self.alias}" if self.alias else "")


def parse_ref(text: str) -> Ref:
    """``iris`` / ``iris:3`` / ``iris@prod`` -> Ref."""
    name, _, alias = text.partition("@")
    name, _, version = name.partition(":")
    check_model_name(name)
    if version and alias:
        raise RegistryError(f"reference {text!r}: give a version or an alias, not both")
    if version and not version.isdigit():
        raise UnknownVersion(f"reference {text!r}: version must be a positive integer")
    return Ref(name, int(version) if version else None, alias or None)


def get_model(session: Session, name: str) -> Model:
    model = session.scalars(select(Model).where(Model.name == name)).first()
    if model is None:
        known = ", ".join(session.scalars(select(Model.name).order_by(Model.name).limit(20))) or "none"
        raise UnknownModel(f"model {name!r} is not registered (registered: {known})")
    return model


def resolve(session: Session, ref: Ref | str) -> ModelVersion:
    """The version a reference names; clear errors for an unknown model, version or alias."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    model = get_model(session, ref.model)
    base = select(ModelVersion).options(joinedload(ModelVersion.model)).where(ModelVersion.model_id == model.id)
    if ref.version is not None:
        found = session.scalars(base.where(ModelVersion.version == ref.version)).first()
        if found is None:
            have = [v.version for v in model.versions]
            raise UnknownVersion(f"model {model.name!r} has no version {ref.version} (versions: {have})")
        return found
    alias = session.get(ModelAlias, (model.id, ref.alias or DEFAULT_ALIAS))
    if alias is not None:
        return alias.version
    if ref.alias:
        raise UnknownAlias(f"model {model.name!r} has no alias {ref.alias!r}")
    latest = session.scalars(base.order_by(ModelVersion.version.desc())).first()
    if latest is None:
        raise UnknownVersion(f"model {model.name!r} has no versions")
    return latest


def register(
    session: Session,
    store: ArtifactStore,
    name: str,
    artifact: Path,
    *,
    runtime: str = "onnx",
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    mem_bytes: int | None = None,
    service_ms: float = 1.0,
    description: str = "",
) -> ModelVersion:
    """Store the artifact, compute its sha256 and record a new immutable version (1, 2, ...)."""
    check_model_name(name)
    if runtime not in RUNTIMES:
        raise UnknownRuntime(f"runtime {runtime!r} is not available (available: {', '.join(RUNTIMES)})")
    from app.runtime_signatures import signature_for

    # Read from the artifact where the runtime can; also rejects a corrupt or refused artifact, or a runtime whose
    # packages are missing here, before anything is stored.
    inputs, outputs = signature_for(runtime, Path(artifact), inputs, outputs)
    if not inputs or not outputs:
        raise RegistryError(f"model {name!r}: the runtime cannot infer a signature; give inputs and outputs")
    parse_signature(inputs), parse_signature(outputs)  # noqa: B018 - validation only
    uri, digest, size = store.put(Path(artifact))
    model = session.scalars(select(Model).where(Model.name == name)).first()
    if model is None:
        model = Model(name=name, description=description)
        session.add(model)
        session.flush()
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)) or 0
    version = ModelVersion(
        model=model,
        version=latest + 1,
        artifact_uri=uri,
        sha256=digest,
        size_bytes=size,
        runtime=runtime,
        inputs=list(inputs),
        outputs=list(outputs),
        # Without a declared figure, assume a runtime needs about twice the serialized size plus a fixed overhead;
        # the measured footprint replaces this guess once a replica has loaded.
        mem_bytes=mem_bytes if mem_bytes is not None else 2 * size + 64 * 1024**2,
        service_ms=service_ms,
    )
    session.add(version)
    session.flush()
    return version


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelVersion:
    if not alias or set(alias) - _ALIAS_CHARS:
        raise RegistryError(f"alias {alias!r} must be made of a-z, 0-9, '_' and '-'")
    target = resolve(session, Ref(name, version))
    row = session.get(ModelAlias, (target.model_id, alias))
    if row is None:
        session.add(ModelAlias(model_id=target.model_id, name=alias, version_id=target.id))
    else:
        row.version_id = target.id
    session.flush()
    return target


def list_versions(session: Session) -> list[tuple[ModelVersion, list[str]]]:
    """Every version with the aliases pointing at it, newest model first."""
    versions = session.scalars(
        select(ModelVersion)
        .options(joinedload(ModelVersion.model))
        .join(Model)
        .order_by(Model.name, ModelVersion.version)
    ).all()
    aliases: dict[int, list[str]] = {}
    for row in session.scalars(select(ModelAlias)):
        aliases.setdefault(row.version_id, []).append(row.name)
    return [(v, sorted(aliases.get(v.id, []))) for v in versions]


#: Serving settings a model can override, and how each is checked.
_CONFIGURABLE = {
    "policy": lambda v: v is None or v in {p.value for p in Policy},
    "max_queue": lambda v: v is None or (isinstance(v, int) and v >= 1),
    "keep_warm": lambda v: isinstance(v, bool),
    "min_replicas": lambda v: isinstance(v, int) and v >= 0,
    "max_replicas": lambda v: v is None or (isinstance(v, int) and v >= 1),
    "pinned": lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v),
    "max_batch_size": lambda v: isinstance(v, int) and 1 <= v <= 1024,
    "max_queue_delay_ms": lambda v: isinstance(v, int | float) and 0 <= v <= 10_000,
    "p99_ms": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 3.6e6),
    "max_request_bytes": lambda v: v is None or (isinstance(v, int) and v >= 1),
    "max_result_bytes": lambda v: v is None or (isinstance(v, int) and v >= 1),
}


def configure(session: Session, name: str, **changes: Any) -> Model:
    """Change a model's serving settings (policy, queue limit, replica bounds, keep-warm, pinned workers)."""
    model = get_model(session, name)
    for key, value in changes.items():
        check = _CONFIGURABLE.get(key)
        if check is None:
            raise RegistryError(f"{key!r} is not a model setting (settings: {', '.join(_CONFIGURABLE)})")
        if not check(value):
            raise RegistryError(f"model {name!r}: {key}={value!r} is not valid")
        setattr(model, key, value)
    if model.max_replicas is not None and model.max_replicas < model.min_replicas:
        raise RegistryError(f"model {name!r}: max_replicas {model.max_replicas} < min_replicas {model.min_replicas}")
    session.flush()
    return model

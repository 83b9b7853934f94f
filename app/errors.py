"""Every error the fleet raises, in one tree.

Errors that cross the queue (raised in a worker, re-raised in the client) carry a stable ``code`` and a message a
person can act on. Each class takes one positional argument, the message, so that Celery's JSON exception
serialisation can rebuild it on the client side.
"""

from __future__ import annotations


class MaasError(Exception):
    """Root of every error this project raises on purpose."""

    #: Stable, machine-readable code; also used as the ``reason`` prefix in logs and the database.
    code = "MAAS_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- configuration -------------------------------------------------------------------------------------------------
class ConfigError(MaasError):
    """Raised when an environment variable or option has an invalid value."""

    code = "CONFIG_INVALID"


# --- registry --------------------------------------------------------------------------------------------------------
class RegistryError(MaasError):
    """Raised for problems with models, versions and aliases in the registry."""

    code = "REGISTRY_ERROR"


class UnknownModel(RegistryError):
    """Raised when a model name is not registered."""

    code = "UNKNOWN_MODEL"


class UnknownVersion(RegistryError):
    """Raised when a model exists but the requested version does not."""

    code = "UNKNOWN_VERSION"


class UnknownAlias(RegistryError):
    """Raised when an alias is not set for a model, or points at nothing."""

    code = "UNKNOWN_ALIAS"


class InvalidModelName(RegistryError):
    """Raised when a model name cannot be used as a queue name."""

    code = "INVALID_MODEL_NAME"


# --- artifacts and runtimes ------------------------------------------------------------------------------------------
class ArtifactError(MaasError):
    """Raised when an artifact is missing, too large, or unreadable."""

    code = "ARTIFACT_ERROR"


class ArtifactMissing(ArtifactError):
    """Raised when the artifact a version points at does not exist."""

    code = "ARTIFACT_MISSING"


class ChecksumMismatch(ArtifactError):
    """Raised when an artifact's sha256 differs from the one registered for its version."""

    code = "CHECKSUM_MISMATCH"


class CorruptArtifact(ArtifactError):
    """Raised when a runtime cannot parse an artifact whose checksum matched."""

    code = "CORRUPT_ARTIFACT"


class UntrustedArtifact(ArtifactError):
    """Raised when an artifact would run code the operator has not trusted (skops types, entry points)."""

    code = "UNTRUSTED_ARTIFACT"


class UnknownRuntime(ArtifactError):
    """Raised when a version names a runtime this installation does not have."""

    code = "UNKNOWN_RUNTIME"


class MissingDependency(UnknownRuntime):
    """Raised when a runtime or an entry point needs a package that is not installed here; it names the package."""

    code = "MISSING_DEPENDENCY"


# --- loading --------------------------------------------------------------------------------------------------------
class OutOfMemory(MaasError):
    """Raised when a runtime runs out of device or host memory while it loads or runs a model."""

    code = "OUT_OF_MEMORY"


class LoadFailed(MaasError):
    """Raised when a replica's load fails for a reason no more specific error names; the cause is chained."""

    code = "LOAD_FAILED"


# --- requests -------------------------------------------------------------------------------------------------------
class RequestError(MaasError):
    """Raised when a request itself is wrong; retrying it unchanged cannot help."""

    code = "BAD_REQUEST"


class InvalidInput(RequestError):
    """Raised when tensors do not match the version's signature (name, shape, datatype)."""

    code = "INVALID_INPUT"


class InvalidPriority(RequestError):
    """Raised when a priority is outside the ten Redis levels (0 highest, 9 lowest)."""

    code = "INVALID_PRIORITY"


class ModelExecutionError(MaasError):
    """Raised when a model raises while executing a request."""

    code = "MODEL_ERROR"


class NotLoaded(MaasError):
    """Raised when a worker receives a request for a model version it does not hold."""

    code = "NOT_LOADED"


class DeadlineExceeded(MaasError):
    """Raised when a request's deadline passed before it could run; it was not executed."""

    code = "DEADLINE_EXCEEDED"


class QueueFull(MaasError):
    """Raised at submission when a model's backlog is at its limit; nothing was enqueued."""

    code = "QUEUE_FULL"


class MalformedMessage(RequestError):
    """Raised when a message in a queue is not a Celery protocol 2 JSON message of the shape its task expects."""

    code = "MALFORMED_MESSAGE"


class RequestTooLarge(RequestError):
    """Raised when a request (or its body over HTTP) is larger than the limit the fleet accepts."""

    code = "REQUEST_TOO_LARGE"


class ResultTooLarge(MaasError):
    """Raised in place of a result larger than the limit the fleet stores; the result itself is dropped."""

    code = "RESULT_TOO_LARGE"


class Cancelled(MaasError):
    """The caller cancelled the request: stored as its answer when no worker had taken it (it never ran), or
    raised when a generation was cancelled (the tokens made so far were streamed, nothing more is)."""

    code = "CANCELLED"


class ForgedMessage(MaasError):
    """Raised when a control message or a stored result lacks a valid signature under the fleet's signing key."""

    code = "FORGED_MESSAGE"


class Unauthorized(MaasError):
    """Raised when an HTTP request does not carry one of the gateway's API keys."""

    code = "UNAUTHORIZED"


class NotFound(RequestError):
    """Raised when an HTTP request names a route the gateway does not have."""

    code = "NOT_FOUND"


class UnknownPolicy(RequestError):
    """Raised when a scheduling policy or request class name is not known."""

    code = "UNKNOWN_POLICY"


class UnknownJob(MaasError):
    """Raised when a job id is not in the database."""

    code = "UNKNOWN_JOB"


class RequestTimeout(MaasError):
    """Raised by the client when an answer does not arrive within the timeout."""

    code = "TIMEOUT"


# --- lifecycle and placement ----------------------------------------------------------------------------------------
class IllegalTransition(MaasError):
    """Raised when a replica is asked to move between lifecycle states the state machine forbids."""

    code = "ILLEGAL_TRANSITION"


class StopRefused(MaasError):
    """Raised when a stop would take a model below the replicas it must keep (keep-warm, min_replicas): the
    allocator would only load it again."""

    code = "STOP_REFUSED"


class PlacementError(MaasError):
    """Raised when a replica cannot be placed."""

    code = "PLACEMENT_ERROR"


class InsufficientMemory(PlacementError):
    """Raised when a version's footprint fits on no live device; the message carries the figures."""

    code = "INSUFFICIENT_MEMORY"


class UnknownWorker(PlacementError):
    """Raised when a load names a worker or device that is not registered or not alive."""

    code = "UNKNOWN_WORKER"


class Fenced(MaasError):
    """Raised when a worker declared lost (cut off, then back) acts on the fleet before it has reconciled."""

    code = "FENCED"


class UnknownReplica(MaasError):
    """Raised when a replica id is not in the database."""

    code = "UNKNOWN_REPLICA"


# --- outside systems ------------------------------------------------------------------------------------------------
class BrokerUnavailable(MaasError):
    """Raised when Redis (the broker and result store) cannot be reached or does not answer in time."""

    code = "BROKER_UNAVAILABLE"


class AdmissionNotReplicated(BrokerUnavailable):
    """An admission the Redis primary took but no replica confirmed in time (MAAS_REDIS_WAIT_REPLICAS).

    The caller takes it back; if a worker has already taken it, it runs and counts as accepted (``backlog`` is what
    the admission reported)."""

    def __init__(self, message: str, backlog: int) -> None:
        super().__init__(message)
        self.backlog = backlog


class DatabaseUnavailable(MaasError):
    """Raised when the database cannot be reached or a query on it fails; the driver's error is chained."""

    code = "DATABASE_UNAVAILABLE"


#: Every class by code, so a client can rebuild the right type from a code that crossed the queue.
BY_CODE: dict[str, type[MaasError]] = {}


def _index(cls: type[MaasError]) -> None:
    BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(MaasError)


def from_code(code: str, message: str) -> MaasError:
    """Rebuild an error from its code and message; an unknown code becomes the root type."""
    return BY_CODE.get(code, MaasError)(message)

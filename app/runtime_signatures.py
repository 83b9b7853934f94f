"""Each runtime's signature at registration: read from the artifact where it says, else the operator's, checked.

This is also the registry's first look at an artifact: a file the runtime cannot parse, one it refuses (untrusted
skops types, pickle weights in a model archive), a signature that contradicts the artifact, or a runtime whose
packages are not installed here fails now, before anything is stored. No operator code runs here: an entry point is
parsed, not imported (its allow-list is the worker's, checked at load).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import RegistryError

Specs = list[dict[str, Any]] | None
#: (artifact, operator inputs, operator outputs) -> (inputs, outputs); None where nobody knows.
Reader = Callable[[Path, Specs, Specs], tuple[Specs, Specs]]


def signature_for(runtime: str, artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes import optional

    optional.require(runtime)
    return _READERS[runtime](Path(artifact), inputs, outputs)


def _onnx(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from app.onnx_signature import read_signature

    found_in, found_out = read_signature(artifact)
    return inputs or found_in, outputs or found_out


def _torchscript(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes.torchscript import forward_arguments, load_module

    module, embedded = load_module(artifact, "cpu")
    embedded = embedded or {}
    inputs, outputs = inputs or embedded.get("inputs"), outputs or embedded.get("outputs")
    if inputs:
        # Tensors are passed to forward() by name: a name it does not take, or an argument nobody fills, would
        # fail every request, so it fails the registration instead.
        names, required = forward_arguments(module)
        given = [str(spec.get("name")) for spec in inputs]
        unknown, unfilled = sorted(set(given) - set(names)), sorted(set(required) - set(given))
        if unknown or unfilled:
            raise RegistryError(
                f"{artifact.name}: forward() takes {names}; inputs {given} (unknown: {unknown}, missing: {unfilled})"
            )
    return inputs, outputs


def _skops(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes.skops_runtime import load_estimator, signature_of

    found_in, found_out = signature_of(load_estimator(artifact))
    _check_outputs(artifact, outputs, found_out)
    if inputs is not None and len(inputs) != 1:
        raise RegistryError(f"{artifact.name}: a scikit-learn model takes exactly one input tensor")
    return inputs or found_in, outputs or found_out


def _entrypoint(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes.entrypoint import parse_spec

    spec = parse_spec(artifact.read_bytes())
    return inputs or spec.inputs, outputs or spec.outputs


def _sentence_transformers(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes.sentence_transformers_runtime import describe, signature

    dim = describe(artifact)["dim"]
    found_in, found_out = signature(dim) if dim else (None, None)
    if inputs is not None and (len(inputs) != 1 or inputs[0].get("datatype") != "BYTES"):
        raise RegistryError(f"{artifact.name}: an embedding model takes exactly one BYTES input (the texts)")
    _check_outputs(artifact, outputs, found_out or signature(1)[1])
    return inputs or found_in, outputs or found_out


def _causal_lm(artifact: Path, inputs: Specs, outputs: Specs) -> tuple[Specs, Specs]:
    from workers.runtimes.causal_lm import describe, signature

    describe(artifact)
    if inputs is not None or outputs is not None:
        raise RegistryError(f"{artifact.name}: a generative model's signature is fixed (prompt in, text out)")
    found_in, found_out = signature()
    return found_in, found_out


def _check_outputs(artifact: Path, outputs: Specs, served: list[dict[str, Any]]) -> None:
    """The runtime names its outputs itself; an operator's signature may list only names it produces."""
    if outputs is None:
        return
    unknown = sorted({str(o.get("name")) for o in outputs} - {o["name"] for o in served})
    if unknown:
        raise RegistryError(
            f"{artifact.name}: outputs {unknown} are not produced (it serves {[o['name'] for o in served]})"
        )


_READERS: dict[str, Reader] = {
    "onnx": _onnx,
    "torchscript": _torchscript,
    "skops": _skops,
    "entrypoint": _entrypoint,
    "sentence_transformers": _sentence_transformers,
    "causal_lm": _causal_lm,
}

"""TorchScript through PyTorch: CUDA on a GPU, the CPU otherwise.

The artifact is a ``torch.jit.save`` file. TorchScript archives hold code and tensors, restored by TorchScript's own
loader; no Python pickle of arbitrary objects is involved. Request tensors are passed to ``forward`` by name, so the
signature's input names are ``forward``'s argument names. Outputs are named by, in order of preference:

- the keys, when ``forward`` returns ``Dict[str, Tensor]``;
- the ``outputs`` of a ``signature.json`` saved beside the model (``torch.jit.save(m, f, _extra_files=...)``),
  which the registry also reads when a version is registered without a signature;
- ``output`` for a single tensor, ``output_0``, ``output_1``... for a tuple.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import CorruptArtifact, InvalidInput, LoadFailed, ModelExecutionError
from workers.runtimes import torch_device
from workers.runtimes.failures import translated

#: Name of the optional signature file inside a TorchScript archive.
SIGNATURE_FILE = "signature.json"


def load_module(artifact: Path, device: str) -> tuple[Any, dict[str, Any] | None]:
    """(scripted module, its embedded signature or None); CorruptArtifact if torch cannot read the file.

    OutOfMemory when the device cannot hold it, MissingDependency when torch cannot be imported.
    """
    extra = {SIGNATURE_FILE: ""}
    # RuntimeError from the zip reader or the TorchScript deserializer; torch.cuda.OutOfMemoryError on the device.
    with translated(f"PyTorch cannot load {artifact.name} as TorchScript"):
        import torch

        with warnings.catch_warnings():
            # PyTorch 2.13 marks TorchScript deprecated in favour of torch.export; the format still loads, and the
            # warning would otherwise repeat in the worker's JSON log on every load.
            warnings.simplefilter("ignore", DeprecationWarning)
            # torch.jit.load has no annotations in torch 2.13.
            module = torch.jit.load(str(artifact), map_location=device, _extra_files=extra)  # type: ignore[no-untyped-call]
    if not extra[SIGNATURE_FILE]:
        return module, None
    try:
        return module, json.loads(extra[SIGNATURE_FILE])
    except ValueError as exc:
        raise CorruptArtifact(f"{artifact.name}: {SIGNATURE_FILE} is not JSON ({exc})") from exc


def forward_arguments(module: Any) -> tuple[list[str], list[str]]:
    """(every argument name of ``forward``, those without a default)."""
    args = module.forward.schema.arguments[1:]  # [0] is self
    return [a.name for a in args], [a.name for a in args if not a.has_default_value()]


class TorchScriptRuntime:
    name = "torchscript"

    def __init__(self) -> None:
        self._module: Any = None
        self._device = "cpu"
        self._output_names: list[str] = []

    def load(self, artifact: Path, use_gpu: bool) -> None:
        with translated("PyTorch cannot start", LoadFailed):
            torch_device.limit_threads()
            device = torch_device.pick(use_gpu)
        module, signature = load_module(artifact, device)
        module.eval()
        self._output_names = [o["name"] for o in (signature or {}).get("outputs", [])]
        self._module, self._device = module, device

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        assert self._module is not None, "infer before load"
        tensors = {name: self._to_tensor(name, array) for name, array in inputs.items()}
        # torch.jit.Error, RuntimeError: the model's own failure; torch.cuda.OutOfMemoryError: OutOfMemory.
        with translated("model raised", ModelExecutionError), torch.inference_mode():
            result = self._module(**tensors)
        return self._name_outputs(result)

    def _to_tensor(self, name: str, array: np.ndarray) -> Any:
        import torch

        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"input {name!r}: TorchScript takes numeric tensors, not {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._device)

    def _name_outputs(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            return {str(k): _to_numpy(v) for k, v in result.items()}
        values = list(result) if isinstance(result, tuple | list) else [result]
        names = self._output_names or (["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))])
        if len(names) != len(values):
            raise ModelExecutionError(f"model returned {len(values)} outputs, its {SIGNATURE_FILE} names {names}")
        return {name: _to_numpy(v) for name, v in zip(names, values, strict=True)}

    def unload(self) -> None:
        self._module = None
        torch_device.release(self._device)

    @property
    def device_label(self) -> str:
        return f"torch:{self._device}" if self._module is not None else "unloaded"


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)

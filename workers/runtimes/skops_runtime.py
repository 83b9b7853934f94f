"""scikit-learn models saved with skops: loaded without pickle, and only when every type in them is trusted.

skops rebuilds objects from a JSON schema and refuses types outside its default-trusted set (scikit-learn, numpy,
scipy). We never pass extra trusted types: a file naming any other type (a custom class, a function from an
arbitrary module) is refused with the list of those types, before anything in it is constructed. Pickle and joblib
files are not accepted at all.

Outputs are named as skl2onnx names them, so a model keeps its signature when it moves between runtimes:
``label`` (and ``probabilities`` when the estimator has ``predict_proba``) for a classifier, ``variable`` otherwise.
The model takes one input tensor, ``X`` of shape ``[-1, n_features]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.errors import CorruptArtifact, InvalidInput, LoadFailed, ModelExecutionError, UntrustedArtifact
from workers.runtimes.failures import translated


def load_estimator(artifact: Path) -> Any:
    """The estimator in a .skops file; ArtifactError for untrusted types, CorruptArtifact for an unreadable file."""
    with translated("skops cannot start", LoadFailed):
        import skops.io as sio

    # zipfile.BadZipFile, KeyError, JSON errors: not a skops file
    with translated(f"{artifact.name} is not a skops file"):
        untrusted = sio.get_untrusted_types(file=artifact)
    if untrusted:
        shown = ", ".join(untrusted[:10]) + (f" and {len(untrusted) - 10} more" if len(untrusted) > 10 else "")
        raise UntrustedArtifact(f"{artifact.name} refused: it holds types skops does not trust ({shown})")
    with translated(f"skops cannot load {artifact.name}"):
        estimator = sio.load(artifact)  # trusted=None: skops' default-trusted types only, checked again here
    if not callable(getattr(estimator, "predict", None)):
        raise CorruptArtifact(f"{artifact.name} holds a {type(estimator).__name__}, which has no predict()")
    return estimator


def is_classifier(estimator: Any) -> bool:
    return hasattr(estimator, "classes_")


def has_proba(estimator: Any) -> bool:
    # hasattr, not callable(getattr(...)): scikit-learn hides predict_proba behind available_if (SVC without
    # probability=True), and hasattr is how it says so.
    return hasattr(estimator, "predict_proba")


def signature_of(estimator: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The signature a fitted estimator serves: FP64 ``X`` in, skl2onnx-style names out."""
    from app.signature import datatype_of

    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise CorruptArtifact(f"{type(estimator).__name__} is not fitted (no n_features_in_); give inputs explicitly")
    inputs = [{"name": "X", "datatype": "FP64", "shape": [-1, int(n_features)]}]
    if not is_classifier(estimator):
        n_outputs = int(getattr(estimator, "n_outputs_", 1))
        return inputs, [{"name": "variable", "datatype": "FP64", "shape": [-1] if n_outputs == 1 else [-1, n_outputs]}]
    classes = np.asarray(estimator.classes_)
    outputs = [{"name": "label", "datatype": datatype_of(classes), "shape": [-1]}]
    if has_proba(estimator):
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes)]})
    return inputs, outputs


class SkopsRuntime:
    name = "skops"

    def __init__(self) -> None:
        self._estimator: Any = None

    def load(self, artifact: Path, use_gpu: bool) -> None:
        self._estimator = load_estimator(artifact)  # scikit-learn runs on the CPU whatever the device

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._estimator is not None, "infer before load"
        if len(inputs) != 1:
            raise InvalidInput(f"a scikit-learn model takes one input tensor, got {sorted(inputs)}")
        (x,) = inputs.values()
        est = self._estimator
        # ValueError for a wrong feature count, and whatever the estimator raises
        with translated("model raised", ModelExecutionError):
            if not is_classifier(est):
                return {"variable": np.asarray(est.predict(x))}
            out = {"label": np.asarray(est.predict(x))}
            if has_proba(est):
                out["probabilities"] = np.asarray(est.predict_proba(x))
            return out

    def unload(self) -> None:
        self._estimator = None

    @property
    def device_label(self) -> str:
        return "sklearn:cpu" if self._estimator is not None else "unloaded"

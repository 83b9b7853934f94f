"""Each runtime in-process: loads a small real artifact built here, answers like the in-process model, unloads;
refuses corrupt, mismatched and untrusted artifacts. The functions at the top are the entry points under test."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from app import errors
from app.runtime_signatures import signature_for
from app.signature import decode_tensor, encode_tensor
from workers.runtimes import archive, create, optional
from workers.runtimes.entrypoint import module_allowed

# torch.jit.script/save warn that TorchScript is deprecated (PyTorch 2.13); the runtime serves existing files.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")
HERE = __name__  # "tests.unit.test_runtimes": the allow-list prefix for the entry points below


def double(inputs):
    return {"y": inputs["x"] * 2}


def shout(inputs):
    return {"loud": np.char.upper(inputs["text"].astype(str)), "length": np.char.str_len(inputs["text"].astype(str))}


def make_scaler(factor):
    return lambda inputs: {"y": inputs["x"] * factor}


def broken(inputs):
    raise ZeroDivisionError("division by zero")


def log1p_custom(x):  # a function skops does not trust: defined in a test module, not in numpy or scikit-learn
    return np.log1p(x)


@pytest.fixture
def allow_here(monkeypatch):
    monkeypatch.setenv("MAAS_ENTRYPOINT_ALLOW", HERE)


def write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def loaded(runtime: str, artifact: Path):
    rt = create(runtime)
    rt.load(artifact, use_gpu=False)
    return rt


# --- runtimes by name -------------------------------------------------------------------------------------------------
def test_unknown_runtime_is_named():
    with pytest.raises(errors.UnknownRuntime, match="'tensorflow' does not exist"):
        create("tensorflow")


def test_a_runtime_whose_package_is_missing_names_it_at_load_and_at_registration(monkeypatch, tmp_path):
    monkeypatch.setitem(optional.NEEDS, "torchscript", (("torch_is_not_here", "torch==2.13.0"),))
    with pytest.raises(errors.UnknownRuntime, match="needs torch==2.13.0"):
        create("torchscript")
    with pytest.raises(errors.UnknownRuntime, match="pip install torch==2.13.0"):
        signature_for("torchscript", tmp_path / "m.pt", None, None)


# --- entry points -----------------------------------------------------------------------------------------------------
def test_entry_point_answers_like_the_function_and_unloads(allow_here, tmp_path):
    rt = loaded("entrypoint", write(tmp_path / "ep.json", {"entrypoint": f"{HERE}:double"}))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(rt.infer({"x": x})["y"], double({"x": x})["y"])
    assert rt.device_label == f"python:{HERE}:double"
    rt.unload()
    assert rt.device_label == "unloaded"


def test_entry_point_factory_is_called_once_with_its_options(allow_here, tmp_path):
    spec = {"entrypoint": f"{HERE}:make_scaler", "factory": True, "options": {"factor": 3}}
    rt = loaded("entrypoint", write(tmp_path / "ep.json", spec))
    np.testing.assert_array_equal(rt.infer({"x": np.ones(2)})["y"], [3.0, 3.0])


def test_bytes_tensors_travel_through_the_signature_encoding_both_ways(allow_here, tmp_path):
    rt = loaded("entrypoint", write(tmp_path / "ep.json", {"entrypoint": f"{HERE}:shout"}))
    texts = ["héllo", "", "a b"]
    wire = json.loads(json.dumps(encode_tensor("text", np.asarray(texts))))  # as it crosses the queue
    assert wire == {"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}
    out = {name: encode_tensor(name, a) for name, a in rt.infer({"text": decode_tensor(wire)}).items()}
    assert out["loud"]["datatype"] == "BYTES" and decode_tensor(out["loud"]).tolist() == ["HÉLLO", "", "A B"]
    assert decode_tensor(out["length"]).tolist() == [5, 0, 3]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("os:system", "not on the allow-list"),
        (f"{HERE}:np.add", "defined in numpy"),  # a re-export from an allowed module is still numpy's
        ("tests.unit.test_runtimesevil:double", "not on the allow-list"),  # prefixes match whole module names
    ],
)
def test_entry_points_outside_the_allow_list_are_refused_before_import(allow_here, tmp_path, target, why):
    rt = create("entrypoint")
    with pytest.raises(errors.ArtifactError, match=why):
        rt.load(write(tmp_path / "ep.json", {"entrypoint": target}), use_gpu=False)


def test_entry_points_are_off_until_the_operator_allows_some(monkeypatch, tmp_path):
    monkeypatch.delenv("MAAS_ENTRYPOINT_ALLOW", raising=False)
    with pytest.raises(errors.ArtifactError, match="set MAAS_ENTRYPOINT_ALLOW"):
        loaded("entrypoint", write(tmp_path / "ep.json", {"entrypoint": f"{HERE}:double"}))


@pytest.mark.parametrize(
    "doc",
    [
        {"entrypoint": f"{HERE}:__builtins__"},
        {"entrypoint": f"{HERE}:double.__globals__"},
        {"entrypoint": "no_colon"},
        {"entrypoint": "../x:y"},
        {"entrypoint": f"{HERE}:double", "unexpected": 1},
        ["not", "an", "object"],
    ],
)
def test_malformed_entry_point_files_are_corrupt(allow_here, tmp_path, doc):
    with pytest.raises(errors.CorruptArtifact):
        loaded("entrypoint", write(tmp_path / "ep.json", doc))


def test_entry_point_failures_are_model_errors(allow_here, tmp_path):
    rt = loaded("entrypoint", write(tmp_path / "ep.json", {"entrypoint": f"{HERE}:broken"}))
    with pytest.raises(errors.ModelExecutionError, match="ZeroDivisionError"):
        rt.infer({"x": np.ones(1)})


@pytest.mark.parametrize(
    ("module", "prefixes", "allowed"),
    [("pkg", ("pkg",), True), ("pkg.sub.mod", ("pkg",), True), ("pkgevil", ("pkg",), False), ("os", (), False)],
)
def test_allow_list_matches_whole_module_names(module, prefixes, allowed):
    assert module_allowed(module, prefixes) is allowed


@pytest.mark.parametrize("text", ["*", "pkg,*", "pkg/evil", "a..b"])
def test_allow_list_has_no_wildcards(text):
    from app.settings import Settings

    with pytest.raises(errors.ConfigError, match="MAAS_ENTRYPOINT_ALLOW"):
        Settings.from_env({"MAAS_ENTRYPOINT_ALLOW": text})


def test_entry_point_signature_comes_from_its_file_without_importing_it(tmp_path):
    sig_in = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    sig_out = [{"name": "y", "datatype": "FP32", "shape": [-1]}]
    path = write(tmp_path / "ep.json", {"entrypoint": "not_installed_anywhere:f", "inputs": sig_in, "outputs": sig_out})
    assert signature_for("entrypoint", path, None, None) == (sig_in, sig_out)


# --- skops ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris_xy():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def test_skops_model_answers_like_the_estimator(iris_xy, tmp_path):
    sio = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    x, y = iris_xy
    model = LogisticRegression(max_iter=1000).fit(x, y)
    sio.dump(model, tmp_path / "lr.skops")
    rt = loaded("skops", tmp_path / "lr.skops")
    out = rt.infer({"X": x})
    np.testing.assert_array_equal(out["label"], model.predict(x))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x))
    inputs, outputs = signature_for("skops", tmp_path / "lr.skops", None, None)
    assert inputs == [{"name": "X", "datatype": "FP64", "shape": [-1, 4]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, 3]),
    ]
    rt.unload()
    assert rt.device_label == "unloaded"


def test_skops_refuses_untrusted_types_at_registration_and_load(iris_xy, tmp_path):
    sio = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = iris_xy
    model = make_pipeline(FunctionTransformer(log1p_custom), LogisticRegression(max_iter=1000)).fit(x, y)
    sio.dump(model, tmp_path / "custom.skops")
    with pytest.raises(errors.ArtifactError, match=f"refused.*{HERE}.log1p_custom"):
        loaded("skops", tmp_path / "custom.skops")
    with pytest.raises(errors.ArtifactError, match="refused"):
        signature_for("skops", tmp_path / "custom.skops", None, None)


def test_skops_refuses_pickles_and_garbage(iris_xy, tmp_path):
    pytest.importorskip("skops.io")
    import pickle

    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "junk.skops").write_bytes(b"\x00" * 64)
    for name in ("model.pkl", "junk.skops"):
        with pytest.raises(errors.CorruptArtifact, match="not a skops file"):
            loaded("skops", tmp_path / name)


def test_skops_explicit_outputs_must_be_ones_it_serves(iris_xy, tmp_path):
    sio = pytest.importorskip("skops.io")
    from sklearn.linear_model import LinearRegression

    x, y = iris_xy
    sio.dump(LinearRegression().fit(x, y), tmp_path / "reg.skops")
    with pytest.raises(errors.RegistryError, match=r"outputs \['label'\] are not produced"):
        signature_for("skops", tmp_path / "reg.skops", None, [{"name": "label", "datatype": "FP64", "shape": [-1]}])


# --- TorchScript ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    torch = pytest.importorskip("torch")

    class Affine(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": self.linear(x), "sq": (x * x).sum(dim=1)}

    class Pair(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, (a - b) * scale

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("torchscript")
    affine = torch.jit.script(Affine().eval())
    torch.jit.save(affine, str(root / "affine.pt"))
    sig = {
        "inputs": [{"name": n, "datatype": "FP32", "shape": [-1]} for n in ("a", "b")],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1]} for n in ("sum", "diff")],
    }
    torch.jit.save(torch.jit.script(Pair()), str(root / "pair.pt"), _extra_files={"signature.json": json.dumps(sig)})
    return {"affine": affine, "root": root, "torch": torch}


def test_torchscript_answers_like_the_scripted_module_and_unloads(scripted):
    torch = scripted["torch"]
    rt = loaded("torchscript", scripted["root"] / "affine.pt")
    assert rt.device_label == "torch:cpu"
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    out = rt.infer({"x": x})
    with torch.no_grad():
        want = scripted["affine"](torch.from_numpy(x))
    np.testing.assert_allclose(out["y"], want["y"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["sq"], want["sq"].numpy(), rtol=1e-6)
    rt.unload()
    assert rt.device_label == "unloaded"


def test_torchscript_tuple_outputs_are_named_by_the_embedded_signature(scripted):
    path = scripted["root"] / "pair.pt"
    rt = loaded("torchscript", path)
    a, b = np.array([3.0, 4.0], dtype=np.float32), np.array([1.0, 1.0], dtype=np.float32)
    out = rt.infer({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], [4.0, 5.0])
    np.testing.assert_array_equal(out["diff"], [4.0, 6.0])
    inputs, outputs = signature_for("torchscript", path, None, None)
    assert [i["name"] for i in inputs] == ["a", "b"] and [o["name"] for o in outputs] == ["sum", "diff"]


def test_torchscript_signature_must_match_forward(scripted):
    path = scripted["root"] / "affine.pt"
    out = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    with pytest.raises(errors.RegistryError, match=r"unknown: \['z'\], missing: \['x'\]"):
        signature_for("torchscript", path, [{"name": "z", "datatype": "FP32", "shape": [-1, 4]}], out)
    # No signature in the file and none given: the registry asks the operator for one.
    assert signature_for("torchscript", path, None, None) == (None, None)


def test_torchscript_refuses_other_files_and_bad_tensors(scripted, iris, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    for path in (tmp_path / "junk.pt", iris["path"]):  # garbage, and a valid artifact of another runtime
        with pytest.raises(errors.CorruptArtifact, match="cannot load"):
            loaded("torchscript", path)
    rt = loaded("torchscript", scripted["root"] / "affine.pt")
    with pytest.raises(errors.ModelExecutionError):
        rt.infer({"x": np.ones((2, 3), dtype=np.float32)})  # wrong width: the model's own error
    with pytest.raises(errors.InvalidInput, match="numeric"):
        rt.infer({"x": np.asarray(["a"], dtype=object)})


# --- model archives (sentence-transformers) ---------------------------------------------------------------------------
def fake_model_dir(root: Path, modules=None) -> Path:
    """The files a sentence-transformers directory has, with fake weights: enough for the archive checks."""
    root.mkdir()
    types = modules or ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling"]
    paths = ["", "1_Pooling"]
    write(
        root / "modules.json",
        [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(zip(paths, types, strict=True))],
    )
    (root / "1_Pooling").mkdir()
    write(root / "1_Pooling" / "config.json", {"word_embedding_dimension": 8})
    (root / "model.safetensors").write_bytes(b"\x00" * 16)
    return root


def test_archive_is_reproducible_and_gives_the_signature(tmp_path):
    from app.artifacts import sha256_of

    model = fake_model_dir(tmp_path / "m")
    first, second = archive.pack(model, tmp_path / "a.tar"), archive.pack(model, tmp_path / "b.tar")
    assert sha256_of(first) == sha256_of(second)  # same directory, same sha256: stored once
    inputs, outputs = signature_for("sentence_transformers", first, None, None)
    assert inputs == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert outputs == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]


@pytest.mark.parametrize("extra", ["pytorch_model.bin", "modeling_evil.py", "weights.pkl"])
def test_archive_with_pickles_or_code_is_refused(tmp_path, extra):
    model = fake_model_dir(tmp_path / "m")
    (model / extra).write_bytes(b"x")
    with pytest.raises(errors.CorruptArtifact, match="refused"):
        signature_for("sentence_transformers", archive.pack(model, tmp_path / "m.tar"), None, None)


def test_archive_with_links_or_escaping_paths_is_refused(tmp_path):
    for name, kind in (("../escape.json", tarfile.REGTYPE), ("link.json", tarfile.SYMTYPE)):
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            tar.addfile(info, None if kind == tarfile.SYMTYPE else io.BytesIO(b""))
        with pytest.raises(errors.CorruptArtifact):
            archive.extract(path, tmp_path / "out")


def test_archive_naming_foreign_module_classes_is_refused(tmp_path):
    model = fake_model_dir(tmp_path / "m", ["evil_pkg.Backdoor", "sentence_transformers.models.Pooling"])
    with pytest.raises(errors.CorruptArtifact, match="outside sentence_transformers"):
        signature_for("sentence_transformers", archive.pack(model, tmp_path / "m.tar"), None, None)
    (tmp_path / "junk.tar").write_bytes(b"junk")
    with pytest.raises(errors.CorruptArtifact, match="not a tar"):
        signature_for("sentence_transformers", tmp_path / "junk.tar", None, None)


@pytest.mark.parametrize(
    ("array", "why"),
    [
        (np.asarray([1, None], dtype=object), "must be strings"),
        (np.asarray([b"\xff"], dtype=object), "not valid UTF-8"),
        (np.asarray([["a"]], dtype=object), "1-d"),
    ],
)
def test_embedding_texts_must_be_a_flat_list_of_strings(array, why):
    from workers.runtimes.sentence_transformers_runtime import _texts

    with pytest.raises(errors.InvalidInput, match=why):
        _texts({"text": array})
    assert _texts({"text": np.asarray([b"caf\xc3\xa9", "x"], dtype=object)}) == ["café", "x"]

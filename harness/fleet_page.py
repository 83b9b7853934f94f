"""The README's picture of the fleet page, taken from a real fleet: ``python -m harness.fleet_page OUT.png``.

Starts throwaway Redis and PostgreSQL, two workers on virtual devices, beat (the allocator), three models placed
from zero by the allocator, a backlog of requests at mixed priorities, and ``maas serve`` with an API key; then a
headless Chromium opens ``/ui`` with the key as HTTP Basic credentials and saves the page once it shows all of
that. ``--hold`` keeps everything running afterwards and prints the page's URL, for a look in a real browser
(through an SSH tunnel, say) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import browser
from harness.fleet import Fleet
from harness.servers import Server, create_database, start_postgres, start_redis

API_KEY = "fleet-page-demo-key"
#: Rows per request in the backlog: wide_mlp takes about 0.5 ms a row, so each waits its turn for a while.
BACKLOG_ROWS = 2000
BACKLOG_REQUESTS = 24


def _models(workdir: Path) -> dict[str, tuple[Path, str, np.ndarray, int]]:
    """name -> (ONNX file, input name, a request's input, declared memory): iris and digits classifiers, a wide
    MLP whose requests take a while."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from bench.models import wide_mlp
    from harness.demo import train

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    iris = LogisticRegression(max_iter=1000).fit(x, y)
    iris_path = workdir / "iris.onnx"
    iris_path.write_bytes(
        to_onnx(iris, x[:1], options={id(iris): {"zipmap": False}}, target_opset=17).SerializeToString()
    )
    digits_path, digits_x, _, _ = train(workdir)
    mlp_path = wide_mlp(workdir / "mlp.onnx")
    return {
        "iris": (iris_path, "X", x[:1], 8 * 1024**2),
        "digits": (digits_path, "X", digits_x[:1], 64 * 1024**2),
        "mlp": (mlp_path, "x", np.zeros((BACKLOG_ROWS, 16), np.float32), 160 * 1024**2),
    }


def take(out: Path, workdir: Path, hold: bool) -> None:
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.client import Client
    from app.db.migrate import upgrade
    from app.db.session import session_scope
    from app.settings import Settings

    servers: list[Server] = []
    fleet: Fleet | None = None
    driver = None
    try:
        redis_server = start_redis()
        servers.append(redis_server)
        postgres = start_postgres()
        servers.append(postgres)
        env = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": create_database(postgres.url, "fleet_page"),
            "MAAS_HOME": str(workdir / "home"),
            "MAAS_VIRTUAL_DEVICES": "2x512MiB",
            "MAAS_LOG_FORMAT": "json",
            "MAAS_ALLOCATION": "true",
            "MAAS_ALLOCATION_PERIOD_S": "2",
        }
        upgrade(env["DATABASE_URL"])
        settings = Settings.from_env(env)
        client = Client(settings)
        store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
        models = _models(workdir)
        with session_scope(settings.sqlalchemy_url) as session:
            for name, (path, _, _, mem_bytes) in models.items():
                registry.register(session, store, name, path, mem_bytes=mem_bytes, service_ms=1.0)
            registry.configure(session, "mlp", min_replicas=2)  # the busy one: a replica on each device

        (workdir / "logs").mkdir()
        fleet = Fleet(env, workdir / "logs")
        for i in range(2):
            fleet.worker(i, f"gpu{i}@demo")
        fleet.beat()
        print("fleet: two workers and beat; sending the first requests (the allocator places the models)")
        first = [client.infer(name, {field: row[:1]}) for name, (_, field, row, _) in models.items()]
        for handle in first:
            handle.wait(timeout_s=180)
        rng = random.Random(0)
        for _ in range(BACKLOG_REQUESTS):
            client.infer("mlp", {"x": models["mlp"][2]}, priority=rng.randrange(10))
        _, base_url = fleet.gateway(MAAS_API_KEYS=API_KEY)

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver = browser.headless_chromium(workdir / "chromium")
        driver.get(browser.with_credentials(base_url, API_KEY) + "/ui")

        def complete(d: object) -> bool:
            ready = [e.get_attribute("data-model") for e in driver.find_elements(By.CSS_SELECTOR, ".replica.READY")]
            waiting = driver.find_elements(By.CSS_SELECTOR, '#queues tr[data-model="mlp"][data-waiting]')
            runs = driver.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
            return sorted(ready) == ["digits", "iris", "mlp", "mlp"] and bool(waiting) and bool(runs)

        WebDriverWait(driver, 120, poll_frequency=0.2).until(complete, "the page to show models, queue and runs")
        browser.full_page_screenshot(driver, out)
        print(f"screenshot: {out} ({out.stat().st_size // 1024} KiB)")
        if hold:
            print(f"holding; open {browser.with_credentials(base_url, API_KEY)}/ui (Ctrl-C to stop)")
            signal.pause()
    finally:
        if driver is not None:
            driver.quit()
        if fleet is not None:
            fleet.stop()
        for server in reversed(servers):
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--hold", action="store_true", help="keep the fleet and gateway running afterwards")
    args = parser.parse_args()
    if browser.missing():
        print(f"missing {', '.join(map(str, browser.missing()))}: apt-get install chromium chromium-driver")
        return 1
    # Ctrl-C, or a plain kill, ends --hold and tears everything down (a shell's background job ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="maas-page-"))
    try:
        take(args.out.resolve(), workdir, args.hold)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``maas``: the command line for operators and scripts. Thin: every command calls the client or a runner."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.allocation_states import MoveState
from app.errors import ArtifactMissing, ConfigError, MaasError
from app.job_states import JobState
from app.lifecycle import DeviceStatus, ReplicaState
from app.policies import Policy, RequestClass
from app.settings import Settings, format_size_bytes, parse_size_bytes
from app.table import bar, gib, mib, render

if TYPE_CHECKING:
    from app.client import Client
    from app.jobs import JobStatus


def _client(settings: Settings) -> Client:
    from app import outage
    from app.client import Client  # imported late: keeps `maas --help` fast
    from app.db.migrate import ensure_current

    outage.retrying(
        lambda: ensure_current(settings.sqlalchemy_url),
        "checking the database schema",
        attempts=settings.retry_attempts,
        max_s=settings.retry_max_s,
    )
    from app.client import current_user

    return Client(settings, requester=f"user {current_user()} via cli")


def _print(args: argparse.Namespace, value: Any, table: str) -> None:
    print(json.dumps(value, indent=2, default=str) if getattr(args, "json", False) else table)


# --- model ----------------------------------------------------------------------------------------------------------
def cmd_model_register(args: argparse.Namespace, settings: Settings) -> int:
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.db.session import session_scope

    if not Path(args.artifact).is_file():
        raise ArtifactMissing(f"{args.artifact}: no such file (give the path of the model file to register)")
    _client(settings)
    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
    with session_scope(settings.sqlalchemy_url) as session:
        version = registry.register(
            session,
            store,
            args.name,
            Path(args.artifact),
            runtime=args.runtime,
            inputs=json.loads(args.inputs) if args.inputs else None,
            outputs=json.loads(args.outputs) if args.outputs else None,
            mem_bytes=args.mem,
            service_ms=args.service_ms,
            description=args.description,
        )
        if args.alias:
            registry.set_alias(session, args.name, args.alias, version.version)
        print(f"registered {version.ref} sha256={version.sha256} size={version.size_bytes} runtime={version.runtime}")
    return 0


def cmd_model_pack(args: argparse.Namespace, settings: Settings) -> int:
    from workers.runtimes.archive import pack

    out = pack(Path(args.directory), Path(args.out))
    print(f"packed {args.directory} into {out} ({out.stat().st_size} bytes)")
    return 0


def cmd_model_list(args: argparse.Namespace, settings: Settings) -> int:
    from app import registry
    from app.db.session import session_scope

    _client(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        rows: list[dict[str, Any]] = [
            {
                "model": v.model.name,
                "version": v.version,
                "aliases": a,
                "runtime": v.runtime,
                "sha256": v.sha256,
                "mem_bytes": v.mem_bytes,
                "inputs": v.inputs,
                "outputs": v.outputs,
            }
            for v, a in registry.list_versions(session)
        ]
    table = render(
        ["MODEL", "VERSION", "ALIASES", "RUNTIME", "SHA256", "DECLARED MEM", "INPUTS"],
        [
            [
                r["model"],
                r["version"],
                ",".join(r["aliases"]),
                r["runtime"],
                r["sha256"][:12],
                mib(r["mem_bytes"]),
                " ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in r["inputs"]),
            ]
            for r in rows
        ],
    )
    _print(args, rows, table)
    return 0


def cmd_model_alias(args: argparse.Namespace, settings: Settings) -> int:
    from app import registry
    from app.db.session import session_scope

    _client(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        version = registry.set_alias(session, args.name, args.alias, args.version)
        print(f"{args.name}@{args.alias} -> {version.ref}")
    return 0


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MaasError(f"--p99-ms: {text!r} is not a number of milliseconds (or 'off')") from None
    if not 0 < value < 3.6e6:
        raise MaasError(f"--p99-ms: {text} is out of range (0 < ms < 3600000)")
    return value


def cmd_model_set(args: argparse.Namespace, settings: Settings) -> int:
    from app import registry
    from app.db.session import session_scope

    _client(settings)
    changes: dict[str, Any] = {}
    keys = ("policy", "max_queue", "min_replicas", "max_replicas", "max_batch_size", "max_queue_delay_ms")
    for key in (*keys, "max_request_bytes", "max_result_bytes"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key) or None  # a size of 0 goes back to the fleet's setting
    if args.keep_warm is not None:
        changes["keep_warm"] = args.keep_warm == "on"
    if args.pin is not None:
        changes["pinned"] = [w for w in args.pin.split(",") if w]
    if args.p99_ms is not None:
        changes["p99_ms"] = None if args.p99_ms == "off" else _positive_ms(args.p99_ms)
    if not changes:
        raise MaasError("nothing to change: give at least one option (see `maas model set --help`)")
    with session_scope(settings.sqlalchemy_url) as session:
        model = registry.configure(session, args.name, **changes)
        print(
            f"{model.name}: policy={model.policy or settings.policy} max_queue={model.max_queue or settings.max_queue} "
            f"keep_warm={model.keep_warm} replicas={model.min_replicas}..{model.max_replicas or '-'} "
            f"pinned={model.pinned or '-'} p99_ms={model.p99_ms if model.p99_ms is not None else '-'} "
            f"max_request={format_size_bytes(model.max_request_bytes or settings.max_request_bytes)} "
            f"max_result={format_size_bytes(model.max_result_bytes or settings.max_result_bytes)}"
        )
    return 0


# --- jobs -----------------------------------------------------------------------------------------------------------
def _job_inputs(path: str) -> dict[str, Any]:
    import numpy as np

    file = Path(path)
    if file.suffix == ".npy":
        return {"x": np.load(file, allow_pickle=False)}
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    doc = json.loads(file.read_text())
    return {name: np.asarray(values, dtype=np.float32) for name, values in doc.items()}


def cmd_job_submit(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    job_id = client.submit_job(
        args.ref,
        _job_inputs(args.file),
        chunk_rows=args.chunk_rows,
        request_class=args.request_class,
        max_attempts=args.max_attempts,
        parallelism=args.parallelism,
    )
    print(job_id)
    return 0


def _job_line(status: JobStatus) -> str:
    from app.table import bar

    finished = status.done + status.failed
    return (
        f"{status.id} {status.model} {status.status:9} {bar(finished / status.total)} "
        f"{status.done}/{status.total} done, {status.failed} failed"
    )


def cmd_job_status(args: argparse.Namespace, settings: Settings) -> int:
    import time

    client = _client(settings)
    while True:
        status = client.jobs.status(args.job)
        print(_job_line(status), flush=True)
        if not args.follow or status.status != JobState.RUNNING:
            break
        time.sleep(1.0)
    for error in status.errors:
        print(f"  {error}")
    return 0 if status.status in (JobState.RUNNING, JobState.SUCCEEDED) else 1


def cmd_job_cancel(args: argparse.Namespace, settings: Settings) -> int:
    print(_job_line(_client(settings).jobs.cancel(args.job)))
    return 0


def cmd_job_results(args: argparse.Namespace, settings: Settings) -> int:
    results = _client(settings).jobs.results(args.job)
    from app.signature import as_data_lists

    print(json.dumps([{"chunk": i, "outputs": r and as_data_lists(r)} for i, r in enumerate(results)]))
    return 0


# --- lifecycle and requests ------------------------------------------------------------------------------------------
def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    handle = _client(settings).load(args.ref, worker=args.worker, device=args.device)
    if args.no_wait:
        print(f"load sent: task {handle.id}")
        return 0
    info = handle.wait()
    print(
        f"{info['model']}:{info['version']} {info['state']} on {info['worker']} (replica {info['replica']}, "
        f"footprint {mib(info['footprint_bytes'])})"
    )
    return 0 if info["state"] == ReplicaState.READY else 1


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    handles = _client(settings).stop(args.ref, worker=args.worker)
    if not handles:
        print(f"{args.ref}: no live replica to stop")
    for handle in handles:
        info = handle.wait()
        print(f"{info['model']}:{info['version']} {info['state']} on {info['worker']} (replica {info['replica']})")
    return 0


def _request_inputs(args: argparse.Namespace, declared: dict[str, str]) -> list[dict[str, Any]]:
    """``--file`` or ``--input name=JSON`` -> tensors; ``declared`` maps input names to the model's datatypes."""
    if args.file:
        doc = json.loads(Path(args.file).read_text() if args.file != "-" else sys.stdin.read())
        return doc["inputs"] if isinstance(doc, dict) else doc
    tensors = []
    for item in args.input:
        name, sep, raw = item.partition("=")
        if not sep:
            raise MaasError(f"--input {item!r}: use name=JSON, e.g. x='[[5.1, 3.5, 1.4, 0.2]]'")
        import numpy as np

        from app.signature import encode_tensor

        array = np.asarray(json.loads(raw))
        tensors.append(encode_tensor(name, _as_declared(array, declared.get(name))))
    return tensors


def _as_declared(array: Any, datatype: str | None) -> Any:
    """JSON numbers as the model's declared datatype when nothing is lost (``X=[[1,2,3,4]]`` for an FP32 input);
    otherwise as they are, for the signature check to name the mismatch."""
    import numpy as np

    from app.signature import DATATYPES

    if datatype is None or datatype == "BYTES" or array.dtype.kind not in "biuf":
        return array
    converted = array.astype(DATATYPES[datatype])
    with np.errstate(invalid="ignore", over="ignore"):
        lossless = np.array_equal(converted.astype(array.dtype), array)
    return converted if lossless else array


def cmd_infer(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    declared = {spec.name: spec.datatype for spec in client.resolve(args.ref).inputs}
    handle = client.infer(
        args.ref,
        _request_inputs(args, declared),
        priority=args.priority,
        request_class=args.request_class,
        deadline_s=args.deadline,
        timeout_s=args.timeout,
    )
    from app.client import with_data_lists

    print(json.dumps(with_data_lists(handle.wait()), indent=None if args.compact else 2))
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Print the text as it is made; Ctrl-C cancels the generation on the worker too."""
    generation = _client(settings).generate(
        args.ref,
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or None,
        priority=args.priority,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
        first_token_deadline_s=args.first_token_deadline,
    )
    try:
        for chunk in generation:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        generation.cancel()
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    if args.verbose:
        print(json.dumps({"id": generation.id, "finish_reason": generation.finish_reason, **generation.usage}))
    return 0


def _generation_rows(reps: list[dict[str, Any]], redis_client: Any, settings: Settings) -> tuple[list[list[Any]], list]:
    """One row per generative replica (those with a KV cache in their footprint): sequences in flight and tokens
    per second as its worker last said (nothing from a worker silent past the heartbeat timeout)."""
    from app.broker import stats

    live = stats.read_live_now(redis_client, settings.heartbeat_timeout_s)
    rows, values = [], []
    for r in reps:
        if r.get("kv_cache_bytes") is None or r["state"] != ReplicaState.READY:
            continue
        now = live.get((r["worker"], r["model"]), {})
        entry = {
            "replica": r["replica"],
            "model": r["model"],
            "worker": r["worker"],
            "sequences": int(now.get("seqs", 0)),
            "tokens_per_s": now.get("tokens_per_s", 0.0),
            "kv_bytes": int(now.get("kv_bytes", 0)),
            "kv_cache_bytes": r["kv_cache_bytes"],
        }
        values.append(entry)
        rows.append(
            [
                r["replica"],
                f"{r['model']}:{r['version']}",
                r["worker"],
                entry["sequences"],
                f"{entry['tokens_per_s']:.1f}",
                mib(entry["kv_bytes"]),
                mib(r["kv_cache_bytes"]),
            ]
        )
    return rows, values


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from app.broker import heartbeats, leases
    from app.broker.clients import for_settings
    from app.broker.demand import read_rates
    from app.broker.keys import BEAT_LEADER
    from app.broker.layout import model_queue
    from app.broker.queues import depths

    client = _client(settings)
    devices, reps = client.devices(), client.replicas()
    models = sorted({r["model"] for r in reps})
    redis_client = for_settings(settings)
    queue_depths = depths(redis_client, [model_queue(m) for m in models]) if models else {}
    hosts = _by_host(devices, reps)
    host_of = {d["worker"]: d["host"] for d in devices}
    reps = sorted(reps, key=lambda r: (host_of.get(r["worker"], ""), r["worker"], r["replica"]))
    value: dict[str, Any] = {"hosts": hosts, "devices": devices, "replicas": reps, "queues": queue_depths}
    host_table = render(
        ["HOST", "WORKERS", "ALIVE", "REPLICAS", "MODELS"],
        [[h["host"], h["workers"], h["alive"], h["replicas"], ",".join(h["models"])] for h in hosts],
    )
    dev_table = render(
        ["HOST", "WORKER", "DEVICE", "KIND", "STATUS", "MEMORY", "USED"],
        [
            [
                d["host"],
                d["worker"],
                d["name"],
                d["kind"],
                "alive" if d["alive"] else d["status"] if d["status"] != DeviceStatus.ONLINE else "silent",
                gib(d["mem_bytes"]),
                gib(d["used_bytes"]),
            ]
            for d in devices
        ],
    )
    rep_table = render(
        ["HOST", "REPLICA", "MODEL", "WORKER", "STATE", "FOOTPRINT", "REASON"],
        [
            [
                host_of.get(r["worker"], ""),
                r["replica"],
                f"{r['model']}:{r['version']}",
                r["worker"],
                r["state"],
                mib(r["footprint_bytes"]),
                r["reason"][:60],
            ]
            for r in reps
        ],
    )
    rates = read_rates(redis_client)
    model_rows = []
    for m in models:
        facts = client.scheduler.facts(m)
        one, many = client.scheduler.estimate_s(m, 1), client.scheduler.estimate_s(m, 32)
        model_rows.append(
            [
                m,
                facts.policy,
                queue_depths[model_queue(m)],
                f"{facts.max_queue}",
                f"{rates.get(m, 0.0):.2f}",
                f"{one * 1000:.2f}",
                f"{many * 1000:.2f}",
                ",".join(facts.device_classes),
            ]
        )
        value.setdefault("models", []).append(
            {
                "model": m,
                "policy": facts.policy,
                "waiting": queue_depths[model_queue(m)],
                "max_queue": facts.max_queue,
                "rate_per_s": rates.get(m, 0.0),
                "est_ms_1_row": one * 1000,
                "est_ms_32_rows": many * 1000,
            }
        )
    m_table = render(
        ["MODEL", "POLICY", "WAITING", "LIMIT", "ARRIVALS/S", "EST MS (1 ROW)", "EST MS (32 ROWS)", "LEARNED ON"],
        model_rows,
    )
    gen_rows, value["generation"] = _generation_rows(reps, redis_client, settings)
    if gen_rows:
        m_table += "\n\n" + render(
            ["REPLICA", "MODEL", "WORKER", "SEQUENCES", "TOKENS/S", "KV USED", "KV RESERVED"], gen_rows
        )
    beats = heartbeats.read(redis_client)
    value["heartbeats"] = {name: {"at": at, "age_s": time.time() - at} for name, at in beats.items()}
    leader = leases.holder(redis_client, BEAT_LEADER)
    value["beat_leader"] = None if leader is None else {"beat": leader[0], "lease_left_s": leader[1]}

    def role(name: str) -> str:
        if not name.startswith("beat"):
            return ""
        return "leader" if leader is not None and leader[0] == name else "standby"

    beat_table = render(
        ["COMPONENT", "LAST HEARTBEAT", "ROLE"],
        [
            [name, heartbeats.describe(at, settings.heartbeat_timeout_s), role(name)]
            for name, at in sorted(beats.items())
        ]
        or [["beat", "never seen", ""]],
    )
    leader_line = "BEAT LEADER  " + (
        "none (no beat holds the lease)" if leader is None else f"{leader[0]} (lease {leader[1]:.1f} s left)"
    )
    beat_table = f"{beat_table}\n{leader_line}"
    _print(args, value, f"{host_table}\n\n{dev_table}\n\n{rep_table}\n\n{m_table}\n\n{beat_table}")
    return 0


def _by_host(devices: list[dict[str, Any]], reps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per host (machine): its workers, how many are alive, the live replicas on them and their models."""
    found: dict[str, dict[str, Any]] = {}
    host_of = {d["worker"]: d["host"] for d in devices}
    for d in devices:
        h = found.setdefault(d["host"], {"host": d["host"], "workers": 0, "alive": 0, "replicas": 0, "models": []})
        h["workers"] += 1
        h["alive"] += int(bool(d["alive"]))
    for r in reps:
        on = found.get(host_of.get(r["worker"], ""))
        if on is not None:
            on["replicas"] += 1
            if r["model"] not in on["models"]:
                on["models"].append(r["model"])
    for summary in found.values():
        summary["models"].sort()
    return [found[name] for name in sorted(found)]


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from app.broker import dlq
    from app.broker.clients import for_settings

    found = dlq.entries(for_settings(settings), limit=args.limit)
    table = render(
        ["AT", "ID", "QUEUE", "DELIVERIES", "REASON"],
        [
            [
                dt.datetime.fromtimestamp(e["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                dlq.entry_id(e),
                e["queue"],
                e.get("deliveries") or "-",
                e["reason"][:100],
            ]
            for e in found
        ],
    )
    _print(args, found, table if found else "no dead letters")
    return 0


#: How much of a dead letter's body `maas dlq show` prints (the entry keeps up to dlq.MAX_BODY_CHARS).
DLQ_PREVIEW_CHARS = 1024


def cmd_dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from app.broker import dlq
    from app.broker.clients import for_settings

    found = dlq.find(for_settings(settings), args.id)
    if found is None:
        raise MaasError(f"no dead letter {args.id!r} (see `maas dlq list`)")
    entry = found[1]
    body = entry.get("body") if entry.get("malformed") else json.dumps(entry.get("request"), default=str)
    preview = (body or "")[:DLQ_PREVIEW_CHARS]
    more = len(body or "") - len(preview) + max(0, int(entry.get("bytes") or 0) - len(body or ""))
    lines = [
        f"id          {dlq.entry_id(entry)}",
        f"task        {entry.get('task_id') or '- (none readable)'}",
        f"queue       {entry['queue']}",
        f"reason      {entry['reason']}",
        f"deliveries  {entry.get('deliveries') or '-'}",
        f"at          {dt.datetime.fromtimestamp(entry['at'], dt.UTC).isoformat()}",
        f"malformed   {'yes: cannot be replayed' if entry.get('malformed') else 'no'}",
        f"body        {preview}" + (f" ... ({more} more characters)" if more > 0 else ""),
    ]
    _print(args, entry, "\n".join(lines))
    return 0


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from app.broker import dlq

    if bool(args.id) == bool(args.all):
        raise MaasError("give one dead letter's ID, or --all")
    client = _client(settings)
    if args.all:
        targets = dlq.stored(client.redis)
    else:
        found = dlq.find(client.redis, args.id)
        if found is None:
            raise MaasError(f"no dead letter {args.id!r} (see `maas dlq list`)")
        targets = [found]
    replayed, refused = 0, 0
    for raw, entry in targets:
        ident = dlq.entry_id(entry)
        try:
            handle = client.replay(entry)
        except MaasError as exc:
            refused += 1
            print(f"{ident}: refused: {exc}", file=sys.stderr)
            continue
        dlq.remove(client.redis, raw)
        replayed += 1
        print(f"{ident}: replayed to {entry['queue']} as task {handle.id}")
    print(f"replayed {replayed}, refused {refused}")
    return 1 if refused else 0


def cmd_dlq_purge(args: argparse.Namespace, settings: Settings) -> int:
    from app.broker import dlq
    from app.broker.clients import for_settings

    print(f"dropped {dlq.purge(for_settings(settings))} dead letters")
    return 0


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    events = _client(settings).history(args.model)
    table = render(
        ["AT", "REPLICA", "VERSION", "WORKER", "FROM", "TO", "BY", "REASON"],
        [
            [
                e["at"][:23],
                e["replica"],
                e["version"],
                e["worker"],
                e["from"] or "-",
                e["to"],
                e["by"] or "-",
                e["reason"][:60],
            ]
            for e in events
        ],
    )
    _print(args, events, table)
    return 0


# --- allocation -----------------------------------------------------------------------------------------------------
def cmd_allocation_show(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    devices, reps = client.devices(), client.replicas()
    lines = []
    hosts = _by_host(devices, reps)
    for h in hosts:
        lines.append(
            f"host {h['host']}: {h['alive']} of {h['workers']} workers alive, {h['replicas']} live replicas"
            + (f" ({', '.join(h['models'])})" if h["models"] else "")
        )
        for d in (d for d in devices if d["host"] == h["host"]):
            lines.extend("  " + line for line in _device_lines(d, reps))
    speeds = _last_speeds(settings)
    if speeds:
        lines.append("service time per device class (as the last allocation run saw it):")
        for model, info in sorted(speeds.items()):
            cells = []
            for label, c in info["classes"].items():
                note = "measured" if c["measured"] else "declared"
                if not c["meets_p99"]:
                    note += f", over p99 {info['p99_ms']:g} ms"
                cells.append(f"{label} {c['service_ms']:.1f} ms ({note})")
            objective = f" [p99 {info['p99_ms']:g} ms]" if info["p99_ms"] is not None else ""
            lines.append(f"  {model}{objective}: " + "; ".join(cells))
    payload = {"hosts": hosts, "devices": devices, "replicas": reps, "speeds": speeds}
    _print(args, payload, "\n".join(lines) or "no devices registered")
    return 0


def _device_lines(d: dict[str, Any], reps: list[dict[str, Any]]) -> list[str]:
    frac = d["used_bytes"] / d["mem_bytes"] if d["mem_bytes"] else 0.0
    tag = " (virtual)" if d["kind"] == "virtual" else ""
    state = "alive" if d["alive"] else d["status"]
    lines = [
        f"{d['worker']}  {d['name']}{tag}  {state}",
        f"  memory {bar(frac, 30)} {gib(d['used_bytes'])} of {gib(d['mem_bytes'])}",
    ]
    for r in (r for r in reps if r["worker"] == d["worker"]):
        lines.append(f"  - {r['model']}:{r['version']} {r['state']} {mib(r['footprint_bytes'])}")
    return lines


def _last_speeds(settings: Settings) -> dict[str, Any]:
    """Per-model service times by device class from the newest allocation run ({} before the first)."""
    from sqlalchemy import select

    from app.db.schema import AllocationRun
    from app.db.session import session_scope

    with session_scope(settings.sqlalchemy_url) as session:
        run = session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc()).limit(1)).first()
        return dict((run.inputs or {}).get("speeds", {})) if run is not None else {}


def cmd_allocation_solve(args: argparse.Namespace, settings: Settings) -> int:
    from beat.allocation import allocate

    client = _client(settings)
    client.app.maas_settings = settings
    summary = allocate(client.app, dry_run=args.dry_run)
    if "skipped" in summary:
        print(summary["skipped"])
        return 1
    moves = render(
        ["#", "MOVE", "MODEL", "WORKER", "AFTER"],
        [
            [i, m["kind"], m["model"], m["device"], ",".join(map(str, m["after"])) or "-"]
            for i, m in enumerate(summary["moves"])
        ],
    )
    head = (
        f"run {summary['run']}: {summary['status']} ({summary['solver_status']}, objective {summary['objective']:.3f},"
        f" bound {summary['bound']:.3f}, gap {summary['gap']:.2%})"
    )
    target = "\n".join(f"  {m}: {', '.join(w)}" for m, w in sorted(summary["target"].items()))
    reason = f"\n{summary['reason']}" if summary["reason"] else ""
    _print(args, summary, f"{head}{reason}\ntarget placement:\n{target}\n\n{moves}")
    return 0


def cmd_allocation_history(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from app.db.schema import AllocationRun
    from app.db.session import session_scope

    _client(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        runs = session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc()).limit(args.limit)).all()
        rows = [
            {
                "run": r.id,
                "at": r.started_at.isoformat(),
                "status": r.status,
                "solver": r.solver_status,
                "objective": r.objective,
                "gap": r.gap,
                "solve_s": r.solve_s,
                "moves": len(r.moves),
                "done": sum(m.get("state") == MoveState.DONE for m in r.moves),
                "reason": r.reason,
            }
            for r in runs
        ]
    table = render(
        ["RUN", "AT", "STATUS", "SOLVER", "GAP", "SOLVE S", "MOVES", "DONE", "REASON"],
        [
            [
                r["run"],
                r["at"][:19],
                r["status"],
                r["solver"],
                f"{(r['gap'] or 0):.2%}",
                f"{(r['solve_s'] or 0):.3f}",
                r["moves"],
                r["done"],
                r["reason"][:50],
            ]
            for r in rows
        ],
    )
    _print(args, rows, table)
    return 0


# --- processes ------------------------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from beat.tasks import register as register_system_tasks
    from workers.main import run

    # Beat's tasks live in beat/; a serving worker runs them only when no controller is meant to.
    extra = register_system_tasks if settings.worker_system_tasks else None
    run(settings, args.device, loglevel=args.loglevel, extra_tasks=extra)
    return 0


def cmd_controller(args: argparse.Namespace, settings: Settings) -> int:
    from beat.controller import run

    run(settings, loglevel=args.loglevel)
    return 0


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    from beat.main import run

    run(settings, loglevel=args.loglevel)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.server import run

    return run(settings, host=args.host, port=args.port)


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    from app.flower import run

    return run(settings, local=args.local, port=args.port, address=args.address)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from app.db.migrate import current_revision, upgrade

    upgrade(settings.sqlalchemy_url)
    print(f"database at revision {current_revision(settings.sqlalchemy_url)}")
    return 0


def _config_where(variables: list[Any], settings: Settings) -> dict[str, str]:
    """Where this environment puts the fleet's state (the database URL with its password masked)."""
    database = next(v.current for v in variables if v.name == "DATABASE_URL") or settings.sqlalchemy_url
    return {
        "database": database,
        "artifact store": str(settings.artifact_dir),
    }


def _config_table(variables: list[Any]) -> str:
    lines = render(
        ["", "VARIABLE", "DEFAULT", "CURRENT"],
        [
            [
                "!" if v.error else "*" if v.differs else "",
                v.name,
                v.default or "(empty)",
                (v.current or "(empty)") + (f"  INVALID: {v.error}" if v.error else ""),
            ]
            for v in variables
        ],
    ).splitlines()
    # Each meaning on its own line under its variable keeps the table narrow enough for a terminal.
    rows = [f"{row}\n     {v.help}" for row, v in zip(lines[2:], variables, strict=True)]
    legend = "* differs from the default   ! invalid: every maas process refuses to start with it"
    return "\n".join([*lines[:2], *rows, "", legend])


def cmd_config(args: argparse.Namespace, settings: Settings | None) -> int:
    """Every variable's default beside its value here; exit 2 if the fleet would refuse this environment."""
    from app.settings import describe

    variables = describe()
    problem, where = "", {}
    try:
        where = _config_where(variables, Settings.from_env())
    except ConfigError as exc:
        problem = str(exc)
    shown = [v for v in variables if v.differs] if args.changed else variables
    if args.json:
        keys = ("name", "default", "current", "is_set", "differs", "error", "help")
        rows = [{key: getattr(v, key) for key in keys} for v in shown]
        print(json.dumps({"variables": rows, "where": where, "error": problem}, indent=2))
    else:
        print(_config_table(shown))
        print(f"\nconfiguration error: {problem}" if problem else "\nWhere state goes:")
        for what, value in where.items():
            print(f"  {what:15} {value}")
        if where:
            print("Workers load artifacts from the paths recorded at registration: share MAAS_HOME between hosts.")
    return 2 if problem else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from harness.demo import main as demo_main
    except ImportError:
        raise ConfigError("the demo runs from a checkout of the repository: run `make demo` there") from None
    return demo_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maas",
        description="Model-as-a-service fleet manager: register models, load them onto GPU-pinned Celery workers, "
        "send prioritised inference requests through Redis, and watch the fleet. Configuration comes from the "
        "environment: run `maas config` for every variable with its default and its value here.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = sub.add_parser("model", help="register, list and alias model versions")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    reg = msub.add_parser("register", help="register a new immutable version from an artifact file")
    reg.add_argument("name", help="model name (a-z, 0-9, '_', '.', '-')")
    reg.add_argument(
        "artifact",
        help="the artifact: .onnx (onnx), TorchScript .pt (torchscript), skops file (skops), entry-point JSON "
        "(entrypoint), or a tar made by `maas model pack` (sentence_transformers, causal_lm)",
    )
    reg.add_argument(
        "--runtime",
        default="onnx",
        help="onnx (default), torchscript, skops, entrypoint, sentence_transformers or causal_lm",
    )
    reg.add_argument(
        "--mem", type=_size, help="declared memory footprint, e.g. 512MiB (default: estimated from the file size)"
    )
    reg.add_argument("--service-ms", type=float, default=1.0, help="declared time per request, ms (default 1)")
    reg.add_argument(
        "--inputs", help="input signature as JSON [{name, datatype, shape}] (default: read from the artifact)"
    )
    reg.add_argument("--outputs", help="output signature as JSON (default: read from the artifact where it can be)")
    reg.add_argument("--alias", help="also point this alias (e.g. prod) at the new version")
    reg.add_argument("--description", default="", help="free text")
    reg.set_defaults(func=cmd_model_register)
    pack = msub.add_parser(
        "pack", help="pack a model directory (sentence-transformers, or a causal LM) into one verifiable tar"
    )
    pack.add_argument("directory")
    pack.add_argument("out", help="the .tar to write (the same directory always gives the same sha256)")
    pack.set_defaults(func=cmd_model_pack)
    lst = msub.add_parser("list", help="list models, versions and aliases")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=cmd_model_list)
    ali = msub.add_parser("alias", help="point an alias (e.g. prod) at a version")
    ali.add_argument("name")
    ali.add_argument("alias")
    ali.add_argument("version", type=int)
    ali.set_defaults(func=cmd_model_alias)

    mset = msub.add_parser("set", help="change a model's serving settings")
    mset.add_argument("name")
    mset.add_argument("--policy", choices=[p.value for p in Policy], help="scheduling policy for this model")
    mset.add_argument("--max-queue", type=int, help="backlog past which requests are refused with QUEUE_FULL")
    mset.add_argument("--keep-warm", choices=["on", "off"], help="keep a replica even when idle")
    mset.add_argument("--min-replicas", type=int, help="the allocator keeps at least this many")
    mset.add_argument("--max-replicas", type=int, help="the allocator places at most this many")
    mset.add_argument("--pin", help="comma-separated worker names the model must be on ('' to clear)")
    mset.add_argument("--max-batch-size", type=int, help="dynamic batching: requests per runtime call (next load)")
    mset.add_argument("--max-queue-delay-ms", type=float, help="dynamic batching: wait this long for a batch to fill")
    mset.add_argument(
        "--p99-ms",
        metavar="MS",
        help="latency objective: keep the model off device classes whose service time exceeds MS ('off' clears)",
    )
    mset.add_argument(
        "--max-request-bytes", type=_size, help="largest request, e.g. 16MiB (0: the fleet's MAAS_MAX_REQUEST_BYTES)"
    )
    mset.add_argument(
        "--max-result-bytes", type=_size, help="largest result stored, e.g. 16MiB (0: MAAS_MAX_RESULT_BYTES)"
    )
    mset.set_defaults(func=cmd_model_set)

    job = sub.add_parser("job", help="chunked batch jobs (SRTF overtakes at chunk boundaries)")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="SUBCOMMAND")
    jsubmit = jsub.add_parser("submit", help="split a data set into chunks and run it; prints the job id")
    jsubmit.add_argument("ref")
    jsubmit.add_argument("file", help=".npy (one input named x), .npz (inputs by name) or JSON {name: rows}")
    jsubmit.add_argument("--chunk-rows", type=int, default=64, help="rows per chunk (default 64)")
    jsubmit.add_argument(
        "--class", dest="request_class", default=RequestClass.BATCH.value, choices=[c.value for c in RequestClass]
    )
    jsubmit.add_argument("--max-attempts", type=int, default=3, help="tries per chunk before it is reported")
    jsubmit.add_argument("--parallelism", type=int, default=1, help="chunks of this job in the queue at once")
    jsubmit.set_defaults(func=cmd_job_submit)
    jstatus = jsub.add_parser("status", help="progress bar and failures of a job")
    jstatus.add_argument("job")
    jstatus.add_argument("--follow", action="store_true", help="refresh every second until it finishes")
    jstatus.set_defaults(func=cmd_job_status)
    jcancel = jsub.add_parser("cancel", help="run no more chunks of a job")
    jcancel.add_argument("job")
    jcancel.set_defaults(func=cmd_job_cancel)
    jres = jsub.add_parser("results", help="each chunk's outputs as JSON")
    jres.add_argument("job")
    jres.set_defaults(func=cmd_job_results)

    load = sub.add_parser("load", help="load a model version onto a worker (REF: name, name:3 or name@prod)")
    load.add_argument("ref")
    where = load.add_mutually_exclusive_group()
    where.add_argument("--worker", help="worker node name, e.g. gpu0@host")
    where.add_argument("--device", type=int, help="device index")
    load.add_argument("--no-wait", action="store_true", help="return once the load is queued")
    load.set_defaults(func=cmd_load)

    gen = sub.add_parser("generate", help="generate text with a generative model, printed as it is made")
    gen.add_argument("ref")
    gen.add_argument("prompt")
    gen.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    gen.add_argument("--seed", type=int, help="sampling seed")
    gen.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    gen.add_argument("--priority", type=int, help="0 (highest) to 9 (lowest); default MAAS_DEFAULT_PRIORITY")
    gen.add_argument("--timeout", type=float, help="seconds to wait for each next chunk")
    gen.add_argument("--deadline", type=float, help="seconds after submission the whole generation must end in")
    gen.add_argument("--first-token-deadline", type=float, help="seconds after submission for the first token")
    gen.add_argument("-v", "--verbose", action="store_true", help="then one JSON line: finish reason and usage")
    gen.set_defaults(func=cmd_generate)

    infer = sub.add_parser("infer", help="send one inference request and print the answer")
    infer.add_argument("ref")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=JSON", help="one input tensor")
    infer.add_argument("--file", help="an Open Inference Protocol request body ({'inputs': [...]}); - for stdin")
    infer.add_argument("--priority", type=int, help="0 (highest) to 9 (lowest); default MAAS_DEFAULT_PRIORITY")
    infer.add_argument(
        "--class",
        dest="request_class",
        default=RequestClass.INTERACTIVE.value,
        choices=[c.value for c in RequestClass],
        help="request class the policy weighs (default interactive)",
    )
    infer.add_argument("--deadline", type=float, help="seconds after which the request is dropped unexecuted")
    infer.add_argument("--timeout", type=float, help="seconds to wait for the answer")
    infer.add_argument("--compact", action="store_true", help="one-line JSON")
    infer.set_defaults(func=cmd_infer)

    stop = sub.add_parser("stop", help="drain and unload the replicas of a model (or one version)")
    stop.add_argument("ref")
    stop.add_argument("--worker", help="only the replica on this worker")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="devices, replicas and queue depths")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    dlqp = sub.add_parser(
        "dlq",
        help="dead letters: requests no worker could serve, with the reason",
        description="A request whose model no worker on its queue holds is requeued a bounded number of times, "
        "then answered NOT_LOADED and kept here. A message in a model queue that cannot be read at all (no id to "
        "answer under) is kept here too, marked malformed.",
    )
    dsub = dlqp.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dlist = dsub.add_parser("list", help="the newest dead letters, newest first")
    dlist.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    dlist.add_argument("--json", action="store_true", help="each entry whole, with what the ledger held of it")
    dlist.set_defaults(func=cmd_dlq_list)
    dshow = dsub.add_parser("show", help="one dead letter whole: reason, queue, deliveries, when, its body")
    dshow.add_argument("id", help="the entry's id (a task id, or dl-... for a malformed message)")
    dshow.add_argument("--json", action="store_true")
    dshow.set_defaults(func=cmd_dlq_show)
    dreplay = dsub.add_parser(
        "replay",
        help="admit dead letters' requests again under their own ids (malformed ones are refused)",
        description="Each request goes through the same checks as a new one (model, signature, queue limit); "
        "a replayed entry leaves the list, a refused one stays, with the reason printed.",
    )
    dreplay.add_argument("id", nargs="?", help="the entry's id")
    dreplay.add_argument("--all", action="store_true", help="every dead letter")
    dreplay.set_defaults(func=cmd_dlq_replay)
    dpurge = dsub.add_parser("purge", help="drop every dead letter")
    dpurge.set_defaults(func=cmd_dlq_purge)

    hist = sub.add_parser("history", help="lifecycle transitions of a model's replicas")
    hist.add_argument("model")
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=cmd_history)

    alloc = sub.add_parser("allocation", help="the MILP placement of replicas on devices")
    asub = alloc.add_subparsers(dest="allocation_command", required=True, metavar="SUBCOMMAND")
    ashow = asub.add_parser("show", help="each device with its models and a memory bar")
    ashow.add_argument("--json", action="store_true")
    ashow.set_defaults(func=cmd_allocation_show)
    asolve = asub.add_parser("solve", help="re-solve the placement now (what beat does every period)")
    asolve.add_argument("--dry-run", action="store_true", help="print the plan and its moves without acting")
    asolve.add_argument("--json", action="store_true")
    asolve.set_defaults(func=cmd_allocation_solve)
    ahist = asub.add_parser("history", help="past allocation runs")
    ahist.add_argument("--limit", type=int, default=20)
    ahist.add_argument("--json", action="store_true")
    ahist.set_defaults(func=cmd_allocation_history)

    worker = sub.add_parser("worker", help="run a worker pinned to one device")
    worker.add_argument("--device", type=int, required=True, help="device index (a GPU, or a virtual device)")
    worker.add_argument("--loglevel", help="override MAAS_LOG_LEVEL")
    worker.set_defaults(func=cmd_worker)

    controller_help = (
        "run beat's tasks (allocation, aging, recovery, reaping) in a process of their own, off the serving "
        "workers; start those with MAAS_WORKER_SYSTEM_TASKS=false"
    )
    controller = sub.add_parser("controller", help=controller_help, description=controller_help)
    controller.add_argument("--loglevel", help="override MAAS_LOG_LEVEL")
    controller.set_defaults(func=cmd_controller)

    beat = sub.add_parser("beat", help="run the periodic scheduler (exactly one per fleet)")
    beat.add_argument("--loglevel", help="override MAAS_LOG_LEVEL")
    beat.set_defaults(func=cmd_beat)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP gateway: Open Inference Protocol (KServe v2 / Triton) API, /metrics, the /ui fleet page",
        description="The fleet's HTTP front door. Binds 127.0.0.1 unless told otherwise; any other address needs "
        "MAAS_API_KEYS (clients send Authorization: Bearer KEY). Stateless: run several behind a load balancer.",
    )
    serve.add_argument("--host", help="bind address (default MAAS_GATEWAY_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default MAAS_GATEWAY_PORT, 8000)")
    serve.set_defaults(func=cmd_serve)
    flower = sub.add_parser("flower", help="run the Flower web UI against the fleet's broker")
    flower.add_argument("--local", action="store_true", help="no authentication; binds to 127.0.0.1 only")
    flower.add_argument("--port", type=int, help="default MAAS_FLOWER_PORT (5555)")
    flower.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1; ignored with --local)")
    flower.set_defaults(func=cmd_flower)

    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    up = dsub.add_parser("upgrade", help="apply migrations up to the latest")
    up.set_defaults(func=cmd_db_upgrade)

    config_help = "show every environment variable the fleet reads: its default, its value here, its meaning"
    config = sub.add_parser(
        "config",
        help=config_help,
        description=f"{config_help[0].upper()}{config_help[1:]}. A '*' marks a value that differs from the "
        "default, a '!' one that every maas process would refuse (exit status 2). Below the table: where the "
        "database, the artifact store and beat's schedule are, from MAAS_HOME and DATABASE_URL. Passwords in "
        "URLs and in MAAS_FLOWER_BASIC_AUTH are shown as ***.",
    )
    config.add_argument("--changed", action="store_true", help="only the variables that differ from their default")
    config.add_argument("--json", action="store_true", help="machine-readable output")
    # It reports invalid values itself instead of stopping at the first one.
    config.set_defaults(func=cmd_config, needs_settings=False)

    demo = sub.add_parser("demo", help="run the end-to-end demo (what `make demo` runs)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env() if getattr(args, "needs_settings", True) else None
        return args.func(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except MaasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a user mistake or an outage: one line, the traceback only when asked for
        if args.debug:
            raise
        print(f"error: {_explain(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _explain(exc: Exception) -> str:
    """A line a person can act on, for the errors a command line meets that are not the fleet's own."""
    import redis
    import sqlalchemy.exc

    if isinstance(exc, json.JSONDecodeError):
        return f"INVALID_INPUT: an argument is not valid JSON: {exc}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"BROKER_UNAVAILABLE: cannot reach Redis ({exc}); is REDIS_URL right and the server up?"
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return f"DATABASE_UNAVAILABLE: the database did not answer ({type(exc.orig).__name__}); is DATABASE_URL right?"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}"
    return f"{type(exc).__name__}: {exc}"


def _size(text: str) -> int:
    """argparse type for sizes such as 512MiB."""
    try:
        return parse_size_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


if __name__ == "__main__":
    sys.exit(main())

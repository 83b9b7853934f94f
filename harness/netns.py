"""Several hosts on one machine: Linux network namespaces on a private bridge, for the multi-host tests.

Layout of one :class:`Network`::

    root namespace                         namespace "services"      namespace "ctl"      namespace "h1" ...
    bridge mb<sfx>  198.18.X.1/24  ----veth---- 198.18.X.2:6379 redis ---- beat/controller ---- workers
                                                198.18.X.2:5432 postgres

Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544), one random /24 a network. The bridge holds
that /24 on-link in the root namespace, so the test process reaches every namespace through the bridge and no
packet for a test address can take the default route; the namespaces have no default route at all. Names carry a
short random suffix so parallel runs do not clash, and :meth:`Network.close` deletes every namespace, veth and the
bridge it made (the pytest fixtures call it as a finalizer, so a failing test cleans up too).

A host is cut off by taking its veth down in the root namespace (its processes keep running), and lost by
killing every process it runs. Processes run with ``ip netns exec NS ...``, which execs the command, so the pid
the harness holds is the process itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.servers import Proc, postgres_bindir, redis_binary, wait_for

#: The benchmarking range every test address is taken from.
TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")
REDIS_PORT = 6379
POSTGRES_PORT = 5432


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "multi-host tests create network namespaces, which needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"mhprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _subnets_in_use() -> set[ipaddress.IPv4Network]:
    out = _ip("-4", "-o", "addr", "show").stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return found


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _subnets_in_use()
    subnets = list(TEST_RANGE.subnets(new_prefix=24))
    for _ in range(64):
        candidate = subnets[secrets.randbelow(len(subnets))]
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free /24 in 198.18.0.0/15 after 64 tries")


def wait_tcp(address: str, port: int, timeout_s: float, what: str, proc: Proc | None = None) -> None:
    def listening() -> bool:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited early:\n{proc.log()[-3000:]}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            return sock.connect_ex((address, port)) == 0

    wait_for(listening, timeout_s, f"{what} to listen on {address}:{port}", interval_s=0.05)


@dataclass
class Host:
    """One namespace on the bridge: a machine of the fleet."""

    network: Network
    name: str
    netns: str
    address: str
    veth: str  # the root-namespace end; down = this host is cut off
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        """Run ``argv`` inside this host's namespace; its output goes to ``<logdir>/<name>.log``."""
        proc = Proc(name, ["ip", "netns", "exec", self.netns, *argv], env, self.network.logdir)
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        """Partition: the host keeps running but can reach nothing and nothing can reach it."""
        _ip("link", "set", self.veth, "down")

    def reconnect(self) -> None:
        _ip("link", "set", self.veth, "up")

    def cut_port(self, address: str, port: int) -> None:
        """Cut this host's path to ``address:port`` only (PostgreSQL on the services host, say): new connections
        are refused at once (a policy-routing rule, ``prohibit``) and open ones aborted (``ss -K``), as when that
        server went away for this host alone. Every other path stays up."""
        _ip("-n", self.netns, "rule", "add", *self._port_rule(address, port), "prohibit")
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ss", "-K", "dst", address, "dport", "=", str(port)],
            capture_output=True,
            check=True,
        )

    def restore_port(self, address: str, port: int) -> None:
        _ip("-n", self.netns, "rule", "del", *self._port_rule(address, port), "prohibit")

    @staticmethod
    def _port_rule(address: str, port: int) -> list[str]:
        return ["to", f"{address}/32", "ipproto", "tcp", "dport", str(port)]

    def kill_all(self) -> None:
        """The machine dies: SIGKILL every process this harness started on it."""
        for proc in self.procs:
            proc.kill(signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()
        # Anything left inside the namespace was started by one of our processes (the namespace is ours alone).
        for pid in _ip("netns", "pids", self.netns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class Network:
    """A bridge and the namespaces on it; every one of them is deleted by :meth:`close`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.suffix = secrets.token_hex(3)
        self.bridge = f"mb{self.suffix}"
        self.subnet = _pick_subnet()
        self.hosts: dict[str, Host] = {}
        self._addresses = iter(list(self.subnet.hosts())[1:])  # .1 is the bridge
        self._netns: list[str] = []
        self._links: list[str] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        # On-link in the root namespace: packets for the test range go onto the bridge, never the default route.
        _ip("addr", "add", f"{self.subnet[1]}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        netns = f"mh{self.suffix}-{name}"
        veth, peer = f"mv{self.suffix}{index}", f"mp{self.suffix}{index}"
        address = str(next(self._addresses))
        _ip("netns", "add", netns)
        self._netns.append(netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self._links.append(veth)
        _ip("link", "set", peer, "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", peer)
        _ip("-n", netns, "link", "set", peer, "up")
        host = Host(self, name, netns, address, veth)
        self.hosts[name] = host
        return host

    def remove_host(self, name: str) -> None:
        host = self.hosts.pop(name)
        host.stop_all()
        _ip("link", "del", host.veth, check=False)
        _ip("netns", "del", host.netns, check=False)
        self._links.remove(host.veth)
        self._netns.remove(host.netns)

    def close(self) -> None:
        for host in list(self.hosts.values()):
            host.stop_all()
        for netns in self._netns:
            _ip("netns", "del", netns, check=False)  # also deletes the veth ends inside it, and so their peers
        for link in reversed(self._links):
            if _ip("link", "show", link, check=False).returncode == 0:
                _ip("link", "del", link, check=False)
        self._netns.clear()
        self._links.clear()
        self.hosts.clear()


@dataclass
class Services:
    """Redis and PostgreSQL inside the network's ``services`` namespace, bound to its address only."""

    host: Host
    workdir: Path
    redis: Proc
    postgres: Proc

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host.address}:{REDIS_PORT}/0"

    @property
    def postgres_url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host.address}:{POSTGRES_PORT}/postgres"

    def stop(self) -> None:
        for proc in (self.redis, self.postgres):
            proc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _redis_argv(host: Host, workdir: Path) -> list[str]:
    """A throwaway redis-server on ``host``'s namespace address (no persistence, noeviction)."""
    return [
        redis_binary(),
        "--bind",
        host.address,
        "--port",
        str(REDIS_PORT),
        # Bound to a namespace address on a private bridge that only this machine's test can reach.
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "noeviction",
        "--dir",
        str(workdir),
    ]


def start_services(network: Network, timeout_s: float = 60.0) -> Services:
    host = network.add_host("services")
    workdir = Path(tempfile.mkdtemp(prefix="maas-mh-"))
    shutil.chown(workdir, "postgres", "postgres")  # initdb refuses root; the cluster runs as postgres
    redis = host.spawn(
        "redis",
        _redis_argv(host, workdir),
        dict(os.environ),
    )
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/ensure-services.sh installs it)")
    pg_dir = workdir / "pg"
    pg_dir.mkdir()
    shutil.chown(pg_dir, "postgres", "postgres")
    as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(pg_dir / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    # initdb trusts loopback only; the fleet connects from the other namespaces on the bridge.
    with (pg_dir / "data" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {network.subnet} trust\n")
    postgres = host.spawn(
        "postgres",
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            str(pg_dir / "data"),
            "-p",
            str(POSTGRES_PORT),
            "-k",
            str(pg_dir),
            "-c",
            f"listen_addresses={host.address}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "max_connections=200",
        ],
        dict(os.environ),
    )
    services = Services(host, workdir, redis, postgres)
    try:
        wait_tcp(host.address, REDIS_PORT, timeout_s, "redis-server", redis)
        wait_tcp(host.address, POSTGRES_PORT, timeout_s, "postgres", postgres)
        _wait_postgres(services.postgres_url, timeout_s)
    except Exception:
        services.stop()
        raise
    return services


def _wait_postgres(url: str, timeout_s: float) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")

    def ready() -> bool:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    wait_for(ready, timeout_s, "postgres to accept connections")


class MultiHostFleet:
    """Fleet processes spread over the hosts of a network (the multi-host counterpart of ``harness.fleet.Fleet``).

    ``env`` is the fleet's environment (REDIS_URL and DATABASE_URL pointing at the services namespace); each
    worker gets ``MAAS_HOST`` = its host's name and ``MAAS_WORKER_NAME`` = ``gpu<N>@<host>``.
    """

    def __init__(self, network: Network, env: dict[str, str]) -> None:
        self.network = network
        self.env = env
        self.hosts: list[Host] = []

    def host(self, name: str) -> Host:
        """A new machine on the network; :meth:`close` removes it (namespace, veth and processes)."""
        host = self.network.add_host(name)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        # SIGTERM everything first, so the workers' warm shutdowns overlap instead of queueing one after another.
        for host in self.hosts:
            for proc in host.procs:
                if proc.alive():
                    proc.popen.terminate()
        for host in self.hosts:
            self.network.remove_host(host.name)
        self.hosts.clear()

    def _spawn(self, host: Host, name: str, args: list[str], extra_env: dict[str, str]) -> Proc:
        env = {**os.environ, **self.env, **extra_env}
        return host.spawn(name, [sys.executable, "-m", "app.cli", *args], env)

    def worker(self, host: Host, device: int, **extra_env: str) -> Proc:
        name = f"gpu{device}@{host.name}"
        extra = {"MAAS_WORKER_NAME": name, "MAAS_HOST": host.name, **extra_env}
        return self._spawn(host, name, ["worker", "--device", str(device)], extra)

    def controller(self, host: Host) -> Proc:
        name = f"ctl@{host.name}"
        return self._spawn(host, name, ["controller"], {"MAAS_WORKER_NAME": name, "MAAS_HOST": host.name})

    def beat(self, host: Host) -> Proc:
        return self._spawn(host, f"beat@{host.name}", ["beat"], {"MAAS_HOST": host.name})

    @staticmethod
    def wait_ready(procs: list[Proc], timeout_s: float = 120.0) -> None:
        """Wait for every process to log ``<name> ready.`` (started together, they load in parallel)."""

        def ready() -> bool:
            for proc in procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
            return all(f"{proc.name} ready." in proc.log() for proc in procs)

        wait_for(ready, timeout_s, "workers to be ready", interval_s=0.2)

    def logs(self) -> str:
        procs = [p for h in self.hosts for p in h.procs]
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in procs)


SENTINEL_PORT = 26379

#: Sentinel timings of the harness (the low end of what docs/scaling.md recommends for a LAN): the primary is judged
#: down after this silence, and a failover that has not finished in ``SENTINEL_FAILOVER_TIMEOUT_MS`` is given up
#: and retried by another Sentinel. Not 1 s: on a busy 2-core machine the Sentinels then judged the primary they
#: had just promoted down too (its first replies came over 1 s late) and promoted the other replica, two primaries
#: for 11 s (3 runs in about 50 here, most under load, and once in CI).
SENTINEL_DOWN_AFTER_MS = 2000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000


@dataclass
class SentinelRedis:
    """A Redis primary and two replicas on three hosts, and a Sentinel on each of those hosts (quorum 2) watching
    them under the master name ``maas``, as production would run them; ``url`` is the fleet's REDIS_URL for them.

    Two replicas, not one: after the promotion the other replica follows the new primary at once, so a
    ``WAIT 1`` is met again within a resync instead of timing out until the dead primary returns."""

    primary: Host
    replicas: list[Host]
    servers: dict[str, Proc]  # host name -> its redis-server
    sentinels: list[Proc]
    sentinel_hosts: list[Host]
    workdir: Path
    argv: dict[str, list[str]] = field(default_factory=dict)  # host name -> how its redis-server was started
    master: str = "maas"

    @property
    def hosts(self) -> list[Host]:
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://{h.address}:{SENTINEL_PORT}" for h in self.sentinel_hosts) + "/0"

    def current_primary(self) -> str | None:
        """The address the Sentinels name as primary now (asked of the first one that answers)."""
        import redis as redis_lib

        for host in self.sentinel_hosts:
            try:
                client = redis_lib.Redis(host.address, SENTINEL_PORT, socket_timeout=2, socket_connect_timeout=2)
                found = client.sentinel_get_master_addr_by_name(self.master)
                if found:
                    address = found[0]
                    return address.decode() if isinstance(address, bytes) else str(address)
            except redis_lib.RedisError:
                continue
        return None

    def sentinels_ready(self, servers: int) -> bool:
        """Whether every Sentinel sees the other Sentinels and ``servers - 1`` replicas (found by gossip and
        INFO a few seconds after start; a kill before that may find a Sentinel that cannot vote or promote)."""
        import redis as redis_lib

        for host in self.sentinel_hosts:
            try:
                client = redis_lib.Redis(host.address, SENTINEL_PORT, socket_timeout=2, socket_connect_timeout=2)
                state = client.sentinel_master(self.master)
            except redis_lib.RedisError:
                return False
            if int(state.get("num-slaves", 0)) < servers - 1:
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinel_hosts) - 1:
                return False
        return True

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers.values()]:
            proc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_sentinel_redis(network: Network, timeout_s: float = 60.0) -> SentinelRedis:
    """Primary on a new host ``r1``, replicas on ``r2`` and ``r3``, a Sentinel on each; quorum 2. The hosts join
    the network and go with it."""
    workdir = Path(tempfile.mkdtemp(prefix="maas-sentinel-"))
    hosts = [network.add_host(name) for name in ("r1", "r2", "r3")]
    primary, replicas = hosts[0], hosts[1:]
    servers: dict[str, Proc] = {}
    argvs: dict[str, list[str]] = {}
    for host in hosts:
        argv = [*_redis_argv(host, workdir), "--dbfilename", f"{host.name}.rdb"]
        if host is not primary:
            argv += ["--replicaof", primary.address, str(REDIS_PORT)]
        argvs[host.name] = argv
        servers[host.name] = host.spawn(f"redis-{host.name}", argv, dict(os.environ))
    sentinel_binary = shutil.which("redis-sentinel")
    if sentinel_binary is None:
        raise RuntimeError("redis-sentinel is not installed (scripts/ensure-services.sh installs it)")
    sentinels = []
    for host in hosts:
        conf = workdir / f"sentinel-{host.name}.conf"  # Sentinel rewrites its config: one file each
        conf.write_text(
            f"port {SENTINEL_PORT}\n"
            f"bind {host.address}\n"
            "protected-mode no\n"
            f"dir {workdir}\n"
            f"sentinel monitor maas {primary.address} {REDIS_PORT} 2\n"
            f"sentinel down-after-milliseconds maas {SENTINEL_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout maas {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
            # Both replicas follow the new primary at once: with one at a time, a WAIT waits out the first resync.
            "sentinel parallel-syncs maas 2\n"
        )
        sentinels.append(host.spawn(f"sentinel-{host.name}", [sentinel_binary, str(conf)], dict(os.environ)))
    found = SentinelRedis(primary, replicas, servers, sentinels, hosts, workdir, argvs)
    try:
        for host in hosts:
            wait_tcp(host.address, REDIS_PORT, timeout_s, f"redis-server on {host.name}", servers[host.name])
        for host, proc in zip(hosts, sentinels, strict=True):
            wait_tcp(host.address, SENTINEL_PORT, timeout_s, f"sentinel on {host.name}", proc)
        import redis as redis_lib

        for host in replicas:
            replica = redis_lib.Redis(host.address, REDIS_PORT, socket_timeout=2)
            wait_for(
                lambda r=replica: r.info("replication").get("master_link_status") == "up",  # type: ignore[misc]
                timeout_s,
                f"the replica on {host.name}",
            )
        wait_for(lambda: found.current_primary() == primary.address, timeout_s, "the Sentinels to agree on r1")
        # Each Sentinel must know both replicas and the other two Sentinels before a kill, or it cannot fail over.
        wait_for(lambda: found.sentinels_ready(len(hosts)), timeout_s, "the Sentinels to know each other")
    except Exception:
        found.stop()
        raise
    return found

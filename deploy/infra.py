"""Local single-node Kafka (KRaft) and Cassandra, started as plain JVM processes.

No Docker: Maven resolves each server's jars from Maven Central into
``<state_dir>/lib/<server>-<version>/`` (cached, so the second start is
offline), and we start the server's main class with a generated config.
Everything a server writes (data, config, log, pid file) lives under
``<state_dir>/<server>/``. ``down`` stops only the pids we recorded, and only
if that pid still runs our command line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import base64
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from streamrec.config import Settings
from streamrec.errors import InfraError

log = logging.getLogger(__name__)

SERVERS = ("kafka", "cassandra")
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- #
# Prerequisites
# --------------------------------------------------------------------------- #
def check_java() -> str:
    """Return the java executable, or raise with what to install."""
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java 17 or newer is required but `java` is not on PATH (e.g. apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise InfraError(f"could not read the Java version from `java -version`: {out.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise InfraError(f"Java 17 or newer is required, found Java {major} at {java}")
    return java


def check_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven is required to fetch the Kafka and Cassandra jars but `mvn` is not on PATH (e.g. apt-get install maven)")
    return mvn


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- #
# Artifacts
# --------------------------------------------------------------------------- #
def _pom(server: str) -> Path:
    return Path(str(resources.files("streamrec.deploy").joinpath("maven", server, "pom.xml")))


def _version(settings: Settings, server: str) -> str:
    return settings.kafka_version if server == "kafka" else settings.cassandra_version


def lib_dir(settings: Settings, server: str) -> Path:
    return settings.lib_path / f"{server}-{_version(settings, server)}"


def ensure_artifacts(settings: Settings, server: str) -> Path:
    """Resolve the server's runtime jars with Maven once; later calls are a no-op."""
    target = lib_dir(settings, server)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = check_maven()
    target.mkdir(parents=True, exist_ok=True)
    prop = "kafka.version" if server == "kafka" else "cassandra.version"
    cmd = [
        mvn, "-B", "-q", "-f", str(_pom(server)),
        "-U", "dependency:copy-dependencies",
        f"-D{prop}={_version(settings, server)}",
        f"-DoutputDirectory={target}",
        "-DincludeScope=runtime",
    ]
    log.info("resolving %s %s jars with Maven into %s", server, _version(settings, server), target)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        tail = "\n".join([ln for ln in lines if "[ERROR]" in ln][:5] or lines[-_LOG_TAIL_LINES:])
        raise InfraError(f"Maven could not resolve {server} {_version(settings, server)}:\n{tail}")
    marker.write_text(f"resolved in {time.monotonic() - started:.1f}s\n")
    return target


# --------------------------------------------------------------------------- #
# Process bookkeeping
# --------------------------------------------------------------------------- #
def server_dir(settings: Settings, server: str) -> Path:
    return settings.state_dir / server


def _pid_file(settings: Settings, server: str) -> Path:
    return server_dir(settings, server) / "server.pid"


def log_file(settings: Settings, server: str) -> Path:
    return server_dir(settings, server) / "server.log"


def _marker(settings: Settings, server: str) -> str:
    # Appears in the command line of every process we start, so `down` can
    # prove a pid is still ours before signalling it.
    return f"-Dstreamrec.server={server}@{settings.state_dir.resolve()}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_pid(settings: Settings, server: str) -> int | None:
    """The pid we started for ``server`` if it is still alive and still ours."""
    pid_path = _pid_file(settings, server)
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _marker(settings, server) in _cmdline(pid):
        return pid
    return None


def uptime_s(settings: Settings, server: str) -> float | None:
    """Seconds since the process we started for ``server`` began; None when we did not start it or it is gone."""
    pid = running_pid(settings, server)
    if pid is None:
        return None
    try:
        # Field 22 of /proc/<pid>/stat, in clock ticks since boot; fields are counted after the
        # parenthesised command name, which may itself hold spaces.
        started_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, since_boot - started_ticks / os.sysconf("SC_CLK_TCK"))


def tail_log(settings: Settings, server: str, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        content = log_file(settings, server).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


# --------------------------------------------------------------------------- #
# Health probes
# --------------------------------------------------------------------------- #
def kafka_healthy(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    import asyncio

    from aiokafka import AIOKafkaClient

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return bool(client.cluster.brokers())
        finally:
            await client.close()

    try:
        return asyncio.run(probe())
    except Exception:  # any failure means "not healthy yet"; callers poll
        return False


def cassandra_healthy(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when the node answers a CQL query."""
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    # While polling a starting node the driver logs every refused connection
    # as an ERROR with a traceback; that is expected here, so keep it quiet.
    driver_log = logging.getLogger("cassandra")
    previous = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    cluster = Cluster(
        [host], port=port, connect_timeout=timeout, control_connection_timeout=timeout,
        protocol_version=5, load_balancing_policy=RoundRobinPolicy(),
    )
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=timeout)
        return True
    except Exception:  # any failure means "not healthy yet"; callers poll
        return False
    finally:
        cluster.shutdown()
        driver_log.setLevel(previous)


@dataclass(frozen=True)
class ServerStatus:
    """What `infra status` reports for one server."""

    server: str
    pid: int | None
    healthy: bool
    endpoint: str

    def line(self) -> str:
        state = "up" if self.healthy else ("starting/unhealthy" if self.pid else "down")
        owner = f"pid {self.pid}" if self.pid else ("not started by streamrec" if self.healthy else "-")
        return f"{self.server:<10} {state:<18} {self.endpoint:<18} {owner}"


def endpoint(settings: Settings, server: str) -> str:
    port = settings.kafka_port if server == "kafka" else settings.cassandra_native_port
    return f"localhost:{port}"


def is_healthy(settings: Settings, server: str) -> bool:
    if server == "kafka":
        return kafka_healthy(endpoint(settings, "kafka"))
    return cassandra_healthy("127.0.0.1", settings.cassandra_native_port)


def status(settings: Settings, server: str) -> ServerStatus:
    return ServerStatus(server, running_pid(settings, server), is_healthy(settings, server), endpoint(settings, server))


# --------------------------------------------------------------------------- #
# Server configuration
# --------------------------------------------------------------------------- #

def kafka_cluster_id() -> str:
    """A random Kafka cluster id (22 base64url characters) that does not start with '-'.

    ``kafka-storage format -t <id>`` parses an id starting with '-' as an
    option and fails (it did, once in a CI run); Kafka's own
    ``Uuid.randomUuid`` skips such ids for the same reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_command(settings: Settings, java: str, lib: Path) -> list[str]:
    home = server_dir(settings, "kafka")
    props = home / "server.properties"
    data = home / "data"
    listeners = [f"PLAINTEXT://localhost:{settings.kafka_port}"]
    sasl_lines: list[str] = []
    if settings.kafka_sasl_port is not None:
        listeners.append(f"SASL_PLAINTEXT://localhost:{settings.kafka_sasl_port}")
        sasl_lines = _sasl_plain_properties(settings)
    props.touch(mode=0o600)  # may hold local SASL passwords
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@localhost:{settings.kafka_controller_port}",
                f"listeners={','.join(listeners)},CONTROLLER://localhost:{settings.kafka_controller_port}",
                f"advertised.listeners={','.join(listeners)}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
                *sasl_lines,
                f"log.dirs={data}",
                f"num.partitions={settings.topic_partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    log4j = home / "log4j2.properties"
    log4j.write_text(
        "\n".join(
            [
                "status = warn",
                "appender.console.type = Console",
                "appender.console.name = STDOUT",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.stdout.ref = STDOUT",
                "logger.kafka.name = kafka",
                "logger.kafka.level = INFO",
                "logger.state.name = state.change.logger",
                "logger.state.level = WARN",
                "",
            ]
        )
    )
    jvm = [
        java,
        f"-Xms{settings.kafka_heap}",
        f"-Xmx{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        _marker(settings, "kafka"),
        "-cp",
        f"{lib}/*",
    ]
    if not (data / "meta.properties").exists():
        cluster_id = kafka_cluster_id()
        fmt = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise InfraError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
    return [*jvm, "kafka.Kafka", str(props)]


def _sasl_plain_properties(settings: Settings) -> list[str]:
    """Broker properties for a SASL/PLAIN listener with the configured users."""
    users = settings.kafka_sasl_users.get_secret_value() if settings.kafka_sasl_users else ""
    pairs = [u.split(":", 1) for u in users.split(",") if ":" in u]
    if not pairs:
        raise InfraError("STREAMREC_KAFKA_SASL_PORT is set but STREAMREC_KAFKA_SASL_USERS has no user:password")
    for name, _ in pairs:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InfraError(f"invalid SASL user name {name!r}")
    entries = " ".join(f'user_{name}="{password}"' for name, password in pairs)
    return [
        "sasl.enabled.mechanisms=PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config="
        f"org.apache.kafka.common.security.plain.PlainLoginModule required {entries};",
    ]


# From Cassandra's conf/jvm17-server.options: the module openings it needs on Java 17.
_CASSANDRA_JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
]


def _cassandra_command(settings: Settings, java: str, lib: Path) -> list[str]:
    home = server_dir(settings, "cassandra")
    data = home / "data"
    yaml_path = home / "cassandra.yaml"
    yaml_path.write_text(
        f"""cluster_name: streamrec-local
num_tokens: 16
allocate_tokens_for_local_replication_factor: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
saved_caches_directory: {data / 'saved_caches'}
hints_directory: {data / 'hints'}
cdc_raw_directory: {data / 'cdc_raw'}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{settings.cassandra_storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {settings.cassandra_storage_port}
native_transport_port: {settings.cassandra_native_port}
start_native_transport: true
endpoint_snitch: SimpleSnitch
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 8
concurrent_writes: 16
# The worker packs several users' writes into one unlogged batch (STREAMREC_CASSANDRA_WRITE_BATCH_KIB,
# 40 KiB by default, under the 50 KiB fail threshold): warn above that, not at the stock 5 KiB.
batch_size_warn_threshold: 64KiB
unlogged_batch_across_partitions_warn_threshold: 1000
memtable_allocation_type: heap_buffers
disk_failure_policy: stop
commit_failure_policy: stop
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
"""
    )
    logback = home / "logback.xml"
    logback.write_text(
        """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""
    )
    return [
        java,
        f"-Xms{settings.cassandra_heap}",
        f"-Xmx{settings.cassandra_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=50",
        "-XX:+ExitOnOutOfMemoryError",
        "-Xss512k",
        *_CASSANDRA_JAVA17_FLAGS,
        f"-Dcassandra.config=file://{yaml_path}",
        f"-Dcassandra.storagedir={data}",
        f"-Dcassandra.logdir={home}",
        f"-Dlogback.configurationFile={logback}",
        "-Dcassandra-foreground=true",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=100",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-Dcassandra.jmx.local.port=0",
        _marker(settings, "cassandra"),
        "-cp",
        f"{lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def _ports(settings: Settings, server: str) -> list[int]:
    if server == "kafka":
        return [settings.kafka_port, settings.kafka_controller_port] + (
            [settings.kafka_sasl_port] if settings.kafka_sasl_port is not None else [])
    return [settings.cassandra_native_port, settings.cassandra_storage_port]


# --------------------------------------------------------------------------- #
# up / down
# --------------------------------------------------------------------------- #
def start(settings: Settings, server: str, progress: Callable[[str], None] = log.info) -> ServerStatus:
    """Start ``server`` unless it already runs; wait until it answers. Idempotent."""
    if running_pid(settings, server) is not None:
        progress(f"{server}: already running (pid {running_pid(settings, server)}); waiting for health")
        return _wait_healthy(settings, server, running_pid(settings, server), progress)
    if is_healthy(settings, server):
        progress(f"{server}: a server already answers on {endpoint(settings, server)} (not started by streamrec); using it")
        return ServerStatus(server, None, True, endpoint(settings, server))
    for port in _ports(settings, server):
        if port_in_use(port):
            raise InfraError(
                f"cannot start {server}: port {port} is already in use by another process "
                f"(free it, or choose another port with STREAMREC_{'KAFKA' if server == 'kafka' else 'CASSANDRA'}_*PORT)"
            )
    java = check_java()
    lib = ensure_artifacts(settings, server)
    home = server_dir(settings, server)
    home.mkdir(parents=True, exist_ok=True)
    command = _kafka_command(settings, java, lib) if server == "kafka" else _cassandra_command(settings, java, lib)
    started = time.monotonic()
    with open(log_file(settings, server), "ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=home,  # own session: survives the CLI, not hit by its Ctrl-C
        )
    _pid_file(settings, server).write_text(f"{proc.pid}\n")
    progress(f"{server}: started pid {proc.pid}, log {log_file(settings, server)}")
    result = _wait_healthy(settings, server, proc.pid, progress, popen=proc)
    progress(f"{server}: healthy at {result.endpoint} after {time.monotonic() - started:.1f}s")
    return result


def _wait_healthy(
    settings: Settings, server: str, pid: int | None, progress: Callable[[str], None],
    popen: subprocess.Popen | None = None,
) -> ServerStatus:
    deadline = time.monotonic() + settings.infra_start_timeout_s
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise InfraError(
                f"{server} exited with code {popen.returncode} during start-up. Last lines of "
                f"{log_file(settings, server)}:\n{tail_log(settings, server)}"
            )
        if popen is None and pid is not None and running_pid(settings, server) is None:
            raise InfraError(f"{server} (pid {pid}) died during start-up:\n{tail_log(settings, server)}")
        if is_healthy(settings, server):
            return ServerStatus(server, pid, True, endpoint(settings, server))
        time.sleep(1.0)
    raise InfraError(
        f"{server} did not become healthy within {settings.infra_start_timeout_s:.0f}s. "
        f"Last lines of {log_file(settings, server)}:\n{tail_log(settings, server)}"
    )


def stop(settings: Settings, server: str, timeout: float = 60.0, progress: Callable[[str], None] = log.info) -> bool:
    """Stop the process we started for ``server`` (SIGTERM, then SIGKILL). True if one was stopped."""
    pid = running_pid(settings, server)
    if pid is None:
        _pid_file(settings, server).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(settings, server) == pid:
        if _is_zombie(pid):
            break
        time.sleep(0.2)
    if running_pid(settings, server) == pid and not _is_zombie(pid):
        progress(f"{server}: pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    _pid_file(settings, server).unlink(missing_ok=True)
    progress(f"{server}: stopped pid {pid}")
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def up(settings: Settings, servers: tuple[str, ...] = SERVERS, progress: Callable[[str], None] = log.info) -> list[ServerStatus]:
    """Start the servers (Kafka first: it is faster) and wait for each to be healthy."""
    return [start(settings, s, progress) for s in servers]


def down(settings: Settings, servers: tuple[str, ...] = SERVERS, progress: Callable[[str], None] = log.info) -> None:
    for server in servers:
        if not stop(settings, server, progress=progress):
            progress(f"{server}: not running (nothing started by streamrec)")

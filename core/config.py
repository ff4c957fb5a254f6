"""All streamrec settings, read once from ``STREAMREC_*`` environment variables.

Everything configurable lives in :class:`Settings`; nothing else reads the
environment. CLI flags override fields through :meth:`Settings.with_overrides`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EVENT_TYPES = "view:1,click:2,add_to_cart:3,purchase:4"
CassandraConsistency = Literal[
    "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"
]


class Settings(BaseSettings):
    """Frozen runtime configuration; env var = ``STREAMREC_`` + field name upper-cased."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="ignore")

    # --- Logging -----------------------------------------------------------
    # streamrec's own loggers (and a worker's Faust logs); Kafka and Cassandra clients log warnings only.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    topic_prefix: str = "streamrec"
    topic_partitions: int = Field(4, ge=1)
    topic_replication: int = Field(1, ge=1)
    consumer_group: str = "streamrec-worker"
    # How long the group waits for a silent (killed) worker before moving its partitions.
    kafka_session_timeout_s: float = Field(10.0, ge=6.0, le=300.0)
    # How long one produce request may take before it fails and is re-sent
    # (Faust's default is 20 minutes, during which a batch would just hang).
    kafka_delivery_timeout_s: float = Field(30.0, ge=1.0, le=600.0)
    # How often acknowledged offsets are committed (what a crash replays at most).
    kafka_commit_interval_s: float = Field(1.0, gt=0.0, le=600.0)

    # --- Cassandra ----------------------------------------------------------
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: int = 9042
    cassandra_keyspace: str = "streamrec"
    # CQL replication map; NetworkTopologyStrategy for production, e.g.
    # "{'class': 'NetworkTopologyStrategy', 'dc1': 3}".
    cassandra_replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    cassandra_ssl_cafile: Path | None = None
    cassandra_concurrency: int = Field(64, ge=1)
    # A save of more users than cassandra_concurrency packs users owned by the same replica into
    # unlogged batches (as few per batch as keep the save within that many requests), each up to
    # this many KiB of values (measured: 2-3x less CPU per user in the driver and in Cassandra
    # under a backlog; small saves stay one user per request, which is faster at light load).
    # Stock Cassandra rejects batches over 50 KiB (batch_size_fail_threshold) and logs each one
    # over 5 KiB (batch_size_warn_threshold; `streamrec infra` and deploy/ raise it). 0 = never pack.
    cassandra_write_batch_kib: int = Field(40, ge=0, le=1024)
    # Consistency of window/state reads and writes. LOCAL_QUORUM makes "durable
    # before the offset is committed" mean a quorum of replicas, and lets a new
    # owner read the previous owner's last write; it also works on one node.
    cassandra_read_consistency: CassandraConsistency = "LOCAL_QUORUM"
    cassandra_write_consistency: CassandraConsistency = "LOCAL_QUORUM"

    # --- Local infrastructure (streamrec infra) -----------------------------
    state_dir: Path = Path.home() / ".streamrec"
    artifacts_dir: Path | None = None  # Maven-resolved server jars; default <state_dir>/lib
    kafka_version: str = "4.4.0"
    cassandra_version: str = "5.0.7"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    # Optional SASL/PLAIN listener of the local broker ("user:password,..."), for trying security locally.
    kafka_sasl_port: int | None = None
    kafka_sasl_users: SecretStr | None = None
    kafka_heap: str = "512m"
    cassandra_native_port: int = 9042
    cassandra_storage_port: int = 7000
    cassandra_heap: str = "1G"
    infra_start_timeout_s: float = 180.0

    # --- Windows and events --------------------------------------------------
    window_size: int = Field(50, ge=1, le=10_000)
    window_max_age_days: float = Field(30.0, gt=0)
    # "type:weight,..." — the accepted event types and their weight.
    event_types: str = DEFAULT_EVENT_TYPES
    max_event_bytes: int = 64 * 1024
    max_id_length: int = 256
    max_future_skew_s: float = 24 * 3600.0

    # --- Worker --------------------------------------------------------------
    batch_max_events: int = Field(512, ge=1)
    batch_max_wait_ms: int = Field(2, ge=0)
    # Batches handed to the processor and not yet acknowledged: the next batch is encoded
    # while earlier ones are written and delivered. 1 = one batch at a time.
    batches_in_flight: int = Field(4, ge=1)
    # A batch needing at most this many encoder rows (its users; with explanations on, one more
    # per explained event of each) is encoded on the event loop itself: for a small batch the
    # hand-off to the encoder thread and back costs more than the encode (README "Where the time goes").
    # Larger batches go to the encoder thread, so Kafka fetches keep moving. 0 = always the thread.
    encode_inline_max_rows: int = Field(64, ge=0)
    top_k: int = Field(10, ge=1, le=1000)
    # Worker-local window cache (users); bounds worker memory: ~12 KB per user at N = 50. Never below
    # (batches_in_flight + 1) x batch_max_events: windows not yet stored must stay cached (processor.in_flight_users).
    window_cache_users: int = Field(20_000, ge=0)
    exclude_seen: bool = True
    worker_id: str | None = None
    web_port: int = 6066
    shutdown_grace_s: float = Field(20.0, ge=0)  # SIGTERM: time to finish the in-flight batch
    model_dir: Path | None = None
    onnx_threads: int = 0  # CPU cores one batch encode may use, as concurrent shards (0 = physical cores)
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # Events of a forgotten user that arrive after the request: tracked anew from an empty
    # window (start_fresh), or dead-lettered with reason forgotten_user (refuse).
    forget_policy: Literal["start_fresh", "refuse"] = "start_fresh"
    # Explanations in recommendation messages (items[].because): per item, the ids of its
    # top contributing events among the newest explain_events of the window. Each explained
    # event costs one more encoder row per user (README "Explanations").
    explain: bool = False
    explain_events: int = Field(10, ge=1, le=10_000)
    explain_top: int = Field(3, ge=1, le=100)
    # Share of users a shadow model is scored for (`streamrec model shadow --fraction` overrides it per shadow).
    shadow_fraction: float = Field(1.0, gt=0, le=1)
    # Follow <prefix>.item-vectors, so a multi-view version also recommends items that appeared
    # after it was trained (README "Items described by their content"); 1.5 KiB per item per worker.
    live_items: bool = True

    # --- Retrainer -------------------------------------------------------------
    retrain_horizon_hours: float = Field(24 * 7, gt=0)  # train on events appended within this horizon
    retrain_interval_s: float = Field(3600.0, gt=0)  # the service runs a round this often...
    retrain_every_events: int = Field(0, ge=0)  # ...or after this many new events (0 = interval only)
    retrain_min_events: int = Field(1000, ge=1)
    retrain_max_events: int = Field(5_000_000, ge=1)
    retrain_user_cap: int = Field(200, ge=2)  # most recent events kept per user for training
    retrain_holdout_frac: float = Field(0.1, gt=0, lt=0.5)
    retrain_epochs: int = Field(10, ge=1)
    retrain_tolerance: float = Field(0.005, ge=0)  # publish unless holdout NDCG@10 is worse than live by more
    # offline: the holdout duel decides; online: the candidate is shadowed and its online hit@10 decides.
    retrain_gate: Literal["offline", "online"] = "offline"
    retrain_gate_events: int = Field(2000, ge=1)  # shadow-scored events before the online gate decides
    retrain_gate_tolerance: float = Field(0.01, ge=0)  # promote unless online hit@10 is worse than live's by more
    retrain_gate_timeout_s: float = Field(1800.0, gt=0)  # no verdict within this long: rejected (not enough traffic)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @field_validator("event_types")
    @classmethod
    def _check_event_types(cls, value: str) -> str:
        parse_event_types(value)
        return value

    # --- derived ---------------------------------------------------------------
    @property
    def event_type_weights(self) -> dict[str, float]:
        return parse_event_types(self.event_types)

    @property
    def models_path(self) -> Path:
        return self.model_dir or (self.state_dir / "models")

    @property
    def lib_path(self) -> Path:
        return self.artifacts_dir or (self.state_dir / "lib")

    @property
    def cassandra_contact_points(self) -> list[str]:
        return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]

    def topic(self, name: str) -> str:
        """Full topic name: ``<prefix>.<name>`` (``events``, ``recommendations``, ...)."""
        return f"{self.topic_prefix}.{name}"

    @property
    def events_topic(self) -> str:
        return self.topic("events")

    @property
    def recommendations_topic(self) -> str:
        return self.topic("recommendations")

    @property
    def dlq_topic(self) -> str:
        return self.topic("events.dlq")

    @property
    def forget_topic(self) -> str:
        """Requests to forget a user (keyed by user id; as many partitions as the events topic)."""
        return self.topic("forget")

    @property
    def forget_audit_topic(self) -> str:
        """One audit record per completed forget request."""
        return self.topic("forget.audit")

    @property
    def model_updates_topic(self) -> str:
        return self.topic("model-updates")

    @property
    def items_topic(self) -> str:
        """The item catalogue (compacted, keyed by item id; see ``streamrec items load``)."""
        return self.topic("items")

    @property
    def item_vectors_topic(self) -> str:
        """Text vectors of the catalogue's items (compacted, keyed by item id; ``streamrec items embedder``)."""
        return self.topic("item-vectors")

    def with_overrides(self, **overrides: object) -> "Settings":
        """A copy with the given (non-None) fields replaced, validated again."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        return type(self).model_validate({**self.model_dump(), **values})

    def to_env(self) -> dict[str, str]:
        """``STREAMREC_*`` variables that make a child process (worker, retrainer) see these settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"STREAMREC_{name.upper()}"] = str(value)
        return env

    def kafka_client_kwargs(self) -> dict[str, object]:
        """Security keyword arguments for aiokafka clients: the one translation of the Kafka security settings.

        The worker's Faust app reads its credentials from these too
        (:func:`streamrec.stream.app.broker_credentials`).
        """
        kwargs: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol.endswith("SSL"):
            # What aiokafka's create_ssl_context does: verify the broker against the CA bundle.
            kwargs["ssl_context"] = ssl.create_default_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            )
        return kwargs


def parse_event_types(spec: str) -> dict[str, float]:
    """Parse ``"view:1,click:2"`` into ``{"view": 1.0, "click": 2.0}``."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"event type without a name in {spec!r}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError as exc:
            raise ValueError(f"event type {name!r} has a non-numeric weight {weight!r}") from exc
    if not weights:
        raise ValueError("at least one event type must be configured")
    return weights


def load_settings(**overrides: object) -> Settings:
    """Read the environment once and apply CLI overrides."""
    return Settings().with_overrides(**overrides)

"""One exception base for streamrec; each room raises its own narrow subclass."""


class StreamrecError(Exception):
    """Base of every error streamrec raises on purpose (shown without a traceback by the CLI)."""


class ConfigError(StreamrecError):
    """Settings are missing or inconsistent."""


class InfraError(StreamrecError):
    """The local Kafka/Cassandra launcher could not do what was asked."""


class StateStoreError(StreamrecError):
    """The window store (Cassandra) failed; callers retry, never drop events."""


class ModelError(StreamrecError):
    """A model artifact is missing, incomplete, corrupted or fails verification."""


class DataError(StreamrecError):
    """An interaction log cannot be read: unknown format, missing column, malformed row."""

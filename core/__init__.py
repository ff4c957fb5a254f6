"""streamrec: a streaming, event-driven sequential recommender.

Rooms (installed as subpackages of ``streamrec``), top to bottom; a room
imports only its own layer and those below (pyproject.toml [tool.importlinter]):

- ``streamrec.cli``, ``streamrec.demo``, ``streamrec.bench`` — entry points, benchmarks.
- ``streamrec.retrain`` — recent events, retraining rounds, publish-and-announce, the service.
- ``streamrec.stream``  — the Faust app: events, validation, windows, serving.
- ``streamrec.onnx``    — export, parity, the ONNX Runtime session, artifacts, registry.
- ``streamrec.models``  — the torch encoder, data, training, evaluation, warm start;
  ``streamrec.deploy``  — local Kafka/Cassandra launchers and deployment files.
- ``streamrec.config``, ``streamrec.errors`` — the settings object and the errors.
"""

__version__ = "0.1.0"

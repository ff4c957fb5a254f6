"""streamrec: a streaming, event-driven sequential recommender.

Rooms (installed as subpackages of ``streamrec``):

- ``streamrec.stream``  — the Faust app: events, validation, windows, serving.
- ``streamrec.models``  — the torch encoder, data, training, evaluation, retraining.
- ``streamrec.onnx``    — export, parity, the ONNX Runtime session, artifacts, registry.
- ``streamrec.deploy``  — local Kafka/Cassandra launchers and deployment files.
- ``streamrec.bench``   — benchmarks.
"""

__version__ = "0.1.0"

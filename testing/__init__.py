"""A harness for running streamrec against real Kafka and Cassandra, shared by the benchmarks and the tests.

- :mod:`streamrec.testing.isolation`: a free port, settings of their own for a
  run (topic prefix, keyspace, consumer group), and dropping what a run made.
- :mod:`streamrec.testing.process`: a worker (or a worker-like benchmark
  process) as a child process, waited for through its ``/health``.
- :mod:`streamrec.testing.artifacts`: an untrained model written as a
  servable artifact, for what does not depend on training (latency, registry).

Each module is imported on its own (``from streamrec.testing.process import
ServiceProcess``): only ``artifacts`` imports torch, only ``isolation``'s
clean-up imports the Cassandra driver and a Kafka admin client.
"""

"""The retrain room: on top of the worker, it reads the events topic, trains and publishes.

- ``recent``  — recent events from the events topic (the training data)
- ``round``   — one round: warm-started candidate, holdout duel, publish or reject
- ``publish`` — the one publish-and-announce path (the retrainer and ``streamrec model``)
- ``service`` — the periodic retraining service and its metrics
- ``cli``     — ``streamrec retrain | retrainer | model``
"""

"""Old name of :mod:`streamrec.models.ranking_metrics`, kept only while bench/quality.py still imports it.

Delete this file once bench/ imports ``streamrec.models.ranking_metrics``.
"""

from streamrec.models.ranking_metrics import mean_std, metrics_from_ranks, target_ranks

__all__ = ["mean_std", "metrics_from_ranks", "target_ranks"]

"""Experiments around training: ``bench`` (throughput and time to each milestone), the
hand-written ``baseline``, ``tune`` (Ray Tune sweeps) and ``ablate`` (levers over seeds).

May import: everything but ``rllib_app.cli``.
"""

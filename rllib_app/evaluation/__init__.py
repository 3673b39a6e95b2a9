"""Greedy evaluation on the RLModule alone (no Ray), readable trajectories, plots and reports.

May import: ``envs``, ``models``, ``rllib_app.outputs``, ``rllib_app.config``.
"""

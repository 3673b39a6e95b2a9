"""The curriculum: ``schedule`` decides which stages to train (no Ray), ``callback`` applies
that on every RLlib env runner and reads the per-stage metrics back.

May import: ``envs``, ``rllib_app.outputs``.
"""

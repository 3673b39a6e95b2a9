"""Training with RLlib: the algorithm built from a ``TrainConfig``, the learners with
self-imitation, resources and placement, the training loop and its progress lines.

May import: ``envs``, ``models`` and every ``rllib_app`` package above except
``experiments`` and ``cli``.
"""

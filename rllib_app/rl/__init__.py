"""RL machinery usable with any env: A2C on RLlib's new API stack, the self-imitation
learner mixin, A2C's bulk learner batch and the batched env runner.

May import: ray, torch, numpy. Nothing from ``envs`` or the rest of ``rllib_app``.
"""

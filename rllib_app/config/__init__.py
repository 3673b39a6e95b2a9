"""``TrainConfig`` (the single source of ``toolagent train`` flags, recipe keys and Tune
spaces), the shipped recipes and the small argument types the commands share.

May import: ``envs``, ``rllib_app.curriculum.schedule``.
"""

"""The training app: wires the tool machine env (``envs``) and the GRU module (``models``) into Ray RLlib.

Subpackages by role, each importing only the ones listed before it (no import circle;
``tests/test_layout.py`` checks it):

    rl/           RL machinery usable with any env: A2C, self-imitation, the learner batch, the batched env runner
    outputs/      what a run writes: checkpoints, metrics.parquet, atomic writes, schema versions
    curriculum/   the stage schedule and the RLlib callback that applies it on every env runner
    config/       TrainConfig (the single source of flags), recipes, argument types
    evaluation/   greedy evaluation on the module alone, plots, reports
    training/     building the RLlib algorithm, resources, the training loop
    experiments/  bench, the hand-written baseline, Tune sweeps, ablations
    cli/          the ``toolagent`` command
"""

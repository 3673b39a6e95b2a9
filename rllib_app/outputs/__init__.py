"""What a run writes and how it is read back: checkpoints, ``summary.json``,
``metrics.parquet`` and TensorBoard events, all written atomically (docs/outputs.md).

May import: ``envs`` (stage names), ``rllib_app.rl``. Nothing above it.
"""

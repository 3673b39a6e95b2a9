"""``BulkLearnerBatch``: a learner batch built from the episode chunks in bulk.

RLlib's learner pipeline for a recurrent module (``AddOneTsToEpisodesAndTruncate``,
the default pieces, and for A2C ``GeneralAdvantageEstimation``) walks every chunk's
every column one item at a time through ``tree.map_structure`` and zero-pads each chunk
separately: most of IMPALA's learner time and a large share of A2C's (docs/benchmarks.md,
"The learner alone"). This connector builds the same batch (the same columns, rows,
padding, dtypes and values) with a few numpy operations over all chunks at once:

* each chunk of ``L`` steps becomes ``L + 1`` steps (the artificial bootstrap step of
  ``AddOneTsToEpisodesAndTruncate``: the last observation, action and model outputs
  repeated, reward 0, out of the loss mask), cut into rows of ``max_seq_len`` and
  zero-padded (``AddTimeDimToBatchAndZeroPad``), each row starting from the previous
  step's ``STATE_OUT`` (the lookback's for a continued chunk, the module's initial
  state for a new episode: ``AddStatesFromEpisodesToBatch``);
* with value targets (A2C: ``gamma`` given), ``V`` of every step in one forward pass
  without gradients, and RLlib's own ``compute_value_targets`` over the chunks
  concatenated in order, as ``GeneralAdvantageEstimation`` does (advantages
  standardised over the batch); without (IMPALA, APPO: V-trace is the loss's), none.

``BulkBatchMixin`` puts it in front of an IMPALA or APPO learner's own pipeline.

It differs in one way on purpose: the episodes are left as they came (RLlib's piece
extends each by a step and renames it), so the learner counts the env steps it was
given, not one more per chunk. ``tests/test_learner_batch.py`` compares every column
with RLlib's pipeline on real sampled chunks. Anything it is not built for (several
modules, chunks not in numpy form, a module without ``STATE_OUT``, a batch already
started by other pieces) goes to RLlib's pipeline, which it keeps as ``fallback``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner.learner_connector_pipeline import LearnerConnectorPipeline
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

#: Step columns taken from each chunk's extra model outputs (the rest of them, such as
#: ``STATE_OUT``, only feed ``STATE_IN``), as RLlib's ``AddColumnsFromEpisodesToTrainBatch`` adds them.
_SKIPPED_EXTRAS = (Columns.STATE_OUT,)


class BulkLearnerBatch(ConnectorV2):
    """A learner's whole connector pipeline in bulk (see the module docstring);
    ``gamma``/``lambda_``: add GAE value targets and advantages (A2C), None: not (IMPALA)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, fallback,
                 gamma: float | None = None, lambda_: float | None = None, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.gamma, self.lambda_, self.fallback = gamma, lambda_, fallback
        self.bulk_calls = self.fallback_calls = 0

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, metrics=None, **kwargs):
        module = _single_stateful_module(rl_module)
        if batch or module is None or not all(_bulk_ready(e) for e in episodes) or not episodes:
            self.fallback_calls += 1
            # (not **kwargs: the outer pipeline's own arguments, which the fallback sets itself)
            return self.fallback(rl_module=rl_module, batch=batch, episodes=episodes, explore=explore,
                                 shared_data=shared_data, metrics=metrics)
        self.bulk_calls += 1
        shared_data = {} if shared_data is None else shared_data
        # the batch counts as zero-padded ([B, T] rows with seq_lens), as RLlib's pieces mark it
        shared_data[f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"] = True
        return {DEFAULT_MODULE_ID: self._module_batch(module, episodes)}

    def _module_batch(self, module, episodes: list[SingleAgentEpisode]) -> dict[str, Any]:
        T = int(module.model_config["max_seq_len"])
        lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        steps = lengths + 1  # with the bootstrap step
        # where each (chunk, step) lands: rows of T per chunk, in chunk order
        rows_per_chunk = -(-steps // T)
        first_row = np.concatenate([[0], np.cumsum(rows_per_chunk)[:-1]])
        ends = np.cumsum(steps)  # one past each chunk's last step, in the flat order
        chunk_of_step = np.repeat(np.arange(len(episodes)), steps)
        t_in_chunk = np.arange(ends[-1]) - np.repeat(ends - steps, steps)
        row = first_row[chunk_of_step] + t_in_chunk // T
        col = t_in_chunk % T
        n_rows = int(rows_per_chunk.sum())
        seq_lens = np.bincount(row, minlength=n_rows).astype(np.int64)  # the steps landing in each row

        def padded(flat: np.ndarray) -> np.ndarray:
            out = np.zeros((n_rows, T) + flat.shape[1:], dtype=flat.dtype)
            out[row, col] = flat
            return out

        last = ends - 1  # each chunk's bootstrap step
        # every column gathered from the chunks' buffers at once: flat index of each
        # (chunk, step) into the buffers concatenated, lookbacks included
        own = np.minimum(t_in_chunk, lengths[chunk_of_step] - 1)  # the bootstrap step repeats the last
        obs = _gather([e.observations for e in episodes], chunk_of_step, t_in_chunk)
        actions = _gather([e.actions for e in episodes], chunk_of_step, own)
        rewards = _gather([e.rewards for e in episodes], chunk_of_step, own).astype(np.float32)
        rewards[last] = 0.0
        is_step = np.ones(len(obs), dtype=bool)
        is_step[last] = False
        terminateds = np.zeros(len(obs), dtype=bool)
        truncateds = np.zeros(len(obs), dtype=bool)
        # the last real step ends the chunk: terminated as the env said, else a cut (truncated)
        terminateds[last - 1] = [e.is_terminated for e in episodes]
        truncateds[last - 1] = [not e.is_terminated for e in episodes]

        out = {
            Columns.LOSS_MASK: padded(is_step),
            Columns.TERMINATEDS: padded(terminateds),
            Columns.TRUNCATEDS: padded(truncateds),
            Columns.OBS: padded(obs),
            Columns.ACTIONS: padded(actions),
            Columns.REWARDS: padded(rewards),
        }
        for key in episodes[0].extra_model_outputs:
            if key not in _SKIPPED_EXTRAS:
                out[key] = padded(_gather([e.extra_model_outputs[key] for e in episodes], chunk_of_step, own))
        out[Columns.SEQ_LENS] = seq_lens
        out[Columns.STATE_IN] = self._state_in(module, episodes, rows_per_chunk, T)

        device = next(module.parameters()).device
        tensors = tree.map_structure(lambda v: torch.as_tensor(v, device=device), out)
        if self.gamma is None:
            return tensors
        with torch.no_grad():
            values = convert_to_numpy(module.compute_values(tensors))[row, col]
        value_targets = compute_value_targets(
            values=values, rewards=rewards, terminateds=terminateds, truncateds=truncateds,
            gamma=self.gamma, lambda_=self.lambda_,
        )
        advantages = value_targets - values
        advantages = (advantages - advantages.mean()) / max(1e-4, advantages.std())
        tensors[Postprocessing.ADVANTAGES] = torch.as_tensor(padded(advantages), device=device)
        tensors[Postprocessing.VALUE_TARGETS] = torch.as_tensor(padded(value_targets), device=device)
        return tensors

    @staticmethod
    def _state_in(module, episodes, rows_per_chunk: np.ndarray, T: int):
        """Each row's initial state: the STATE_OUT of the step before the row's first step
        (the module's initial state for an episode's first row)."""
        initial = convert_to_numpy(module.get_initial_state())
        buffers = [e.extra_model_outputs[Columns.STATE_OUT] for e in episodes]
        chunk_of_row = np.repeat(np.arange(len(episodes)), rows_per_chunk)
        row_in_chunk = np.arange(len(chunk_of_row)) - np.repeat(np.cumsum(rows_per_chunk) - rows_per_chunk, rows_per_chunk)
        # the step before step s of a chunk is index lookback + s - 1 of its buffer
        before = T * row_in_chunk - 1
        new_episode = np.array([e.t_started == 0 for e in episodes])[chunk_of_row] & (row_in_chunk == 0)
        leaves = [list(x) for x in zip(*(tree.flatten(b.data) for b in buffers))]
        flat = []
        for first, datas in zip(tree.flatten(initial), leaves):
            # the initial state after the buffers' own, at index total
            gathered = _gather_data(datas + [np.asarray(first)[None]], [b.lookback for b in buffers] + [0],
                                    np.where(new_episode, len(buffers), chunk_of_row), np.where(new_episode, 0, before))
            flat.append(gathered.astype(np.float32, copy=False))
        return tree.unflatten_as(initial, flat)


def _single_stateful_module(rl_module):
    """The one stateful module of ``rl_module``, or None (the fallback's cases)."""
    try:
        keys = list(rl_module.keys())
    except AttributeError:
        return None
    if keys != [DEFAULT_MODULE_ID]:
        return None
    # (a DDP learner's module is a wrapper: the value pass needs no gradient sync)
    module = rl_module[DEFAULT_MODULE_ID].unwrapped()
    return module if module.is_stateful() else None


def _bulk_ready(episode) -> bool:
    return (isinstance(episode, SingleAgentEpisode) and episode.is_numpy and len(episode) > 0
            and Columns.STATE_OUT in episode.extra_model_outputs
            and (episode.t_started == 0 or episode.extra_model_outputs[Columns.STATE_OUT].lookback > 0))


def _gather(buffers, chunk, step) -> Any:
    """``buffers[chunk[i]]``'s own step ``step[i]`` for every ``i``, from the buffers'
    data concatenated (nested data, such as dict observations, leaf by leaf)."""
    datas = [b.data for b in buffers]
    lookbacks = [b.lookback for b in buffers]
    if isinstance(datas[0], np.ndarray):
        return _gather_data(datas, lookbacks, chunk, step)
    leaves = [list(x) for x in zip(*(tree.flatten(d) for d in datas))]
    return tree.unflatten_as(datas[0], [_gather_data(leaf, lookbacks, chunk, step) for leaf in leaves])


def _gather_data(datas: list[np.ndarray], lookbacks: list[int], chunk: np.ndarray, step: np.ndarray) -> np.ndarray:
    sizes = np.fromiter((len(d) for d in datas), np.int64, len(datas))
    own_start = np.cumsum(sizes) - sizes + np.asarray(lookbacks, dtype=np.int64)
    return np.concatenate(datas)[own_start[chunk] + step]


class BulkBatchMixin:
    """Builds an IMPALA or APPO learner's batch with ``BulkLearnerBatch`` (no value
    targets: V-trace computes its own), RLlib's pipeline kept as the fallback. Only over
    RLlib's default pieces, and only where the learner builds batches itself (no
    aggregator actors, which would hand it finished batches)."""

    def build(self) -> None:
        super().build()
        config = self.config
        if (self._learner_connector is not None and config.add_default_connectors_to_learner_pipeline
                and config._learner_connector is None and not config.num_aggregator_actors_per_learner):
            self._learner_connector = LearnerConnectorPipeline(
                connectors=[BulkLearnerBatch(fallback=self._learner_connector)])

"""The learners the app trains with: each algorithm's torch learner plus self-imitation
(``rllib_app.rl.self_imitation``), with the tool machine's program check on the
successes it replays (``--sil-program-check``).
"""

from __future__ import annotations

from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.impala_torch_learner import IMPALATorchLearner
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

from envs.analysis import ProgramCheck
from envs.tool_machine import read_task
from rllib_app.rl.a2c import A2CLearner
from rllib_app.rl.learner_batch import BulkBatchMixin
from rllib_app.rl.self_imitation import SelfImitationMixin


def keep_programs(found: list, check: ProgramCheck) -> list:
    """The successes (``EpisodeStitcher.feed``'s) whose played tools are a program for
    their task's family (``envs.analysis.ProgramCheck``). A shortcut's coincidental win
    is left out, so the replay cannot teach the shortcut (docs/research: the 4-operator
    shortcuts that self-imitation replayed)."""
    kept = []
    for episode in found:
        obs, actions, _, length = episode
        stage, _, operators = read_task(obs[0])
        if check(stage, operators, actions[:length]):
            kept.append(episode)
    return kept


class ToolMachineSelfImitation(SelfImitationMixin):
    """Self-imitation that, with ``sil_program_check`` > 0 in ``learner_config_dict``,
    replays only the successes whose tools also answer that many other contexts."""

    def successes_to_replay(self, found: list) -> list:
        trials = int(self.config.learner_config_dict.get("sil_program_check", 0))
        if trials <= 0:
            return found
        if getattr(self, "_sil_check", None) is None:
            self._sil_check = ProgramCheck(trials, seed=self.config.seed or 0)
        return keep_programs(found, self._sil_check)


class SelfImitationIMPALALearner(ToolMachineSelfImitation, BulkBatchMixin, IMPALATorchLearner):
    """IMPALA's V-trace loss plus the self-imitation term; its batch built in bulk."""


class SelfImitationA2CLearner(ToolMachineSelfImitation, A2CLearner):
    """A2C's loss plus the self-imitation term."""


class SelfImitationPPOLearner(ToolMachineSelfImitation, PPOTorchLearner):
    """PPO's clipped loss plus the self-imitation term."""


class SelfImitationAPPOLearner(ToolMachineSelfImitation, BulkBatchMixin, APPOTorchLearner):
    """APPO's clipped V-trace loss plus the self-imitation term; its batch built in bulk."""

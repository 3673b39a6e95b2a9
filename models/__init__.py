"""Neural networks for the agent, as RLlib RLModules. Knows RLModule, not the env."""

from models.gru_actor_critic import REQUIRED_KEYS, ToolAgentGRUModule

__all__ = ["REQUIRED_KEYS", "ToolAgentGRUModule"]

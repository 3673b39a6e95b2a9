"""The tool machine task: a Gymnasium environment (single and vectorized), its rules, and an oracle.

This package knows nothing of Ray: it is plain Python, numpy and Gymnasium.
"""

from envs.machine import (
    ACTION_NAMES,
    ADD,
    ANS,
    MEMORY_STAGES,
    MUL,
    NUM_ACTIONS,
    RCL,
    STAGE_DIGITS,
    STO,
    SUB,
    MachineState,
    apply_tool,
    stage_target,
)
from envs.oracle import general_program, shortest_program
from envs.tool_machine import (
    CONTEXT_LEN,
    CONTEXT_VOCAB,
    NUM_STAGES,
    PAD_TOKEN,
    SPEC_STAGES,
    START_ACTION,
    VARIANTS,
    ToolMachineEnv,
    observation_layout,
)
from envs.vector_tool_machine import (
    GYM_ENV_ID,
    ToolMachineVectorEnv,
    make_tool_machine,
    register_gymnasium_env,
)

# ``gym.make("envs:toolagent/ToolMachine-v0")`` / ``gym.make_vec(...)`` work in any process.
register_gymnasium_env()

__all__ = [
    "ACTION_NAMES",
    "ADD",
    "ANS",
    "CONTEXT_LEN",
    "CONTEXT_VOCAB",
    "GYM_ENV_ID",
    "MEMORY_STAGES",
    "MUL",
    "NUM_ACTIONS",
    "NUM_STAGES",
    "PAD_TOKEN",
    "RCL",
    "SPEC_STAGES",
    "STAGE_DIGITS",
    "START_ACTION",
    "STO",
    "SUB",
    "VARIANTS",
    "MachineState",
    "ToolMachineEnv",
    "ToolMachineVectorEnv",
    "apply_tool",
    "general_program",
    "make_tool_machine",
    "observation_layout",
    "register_gymnasium_env",
    "shortest_program",
    "stage_target",
]

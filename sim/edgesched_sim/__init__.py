"""The edgesched simulator: a gymnasium environment, workloads, scenarios, training, evaluation.

Importing this package registers ``edgesched/EdgeDVFS-v0``; ``gymnasium.make`` can also import it
by itself: ``gymnasium.make("edgesched_sim:edgesched/EdgeDVFS-v0")``.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "edgesched/EdgeDVFS-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="edgesched_sim.env:EdgeDVFSEnv")

__all__ = ["ENV_ID"]

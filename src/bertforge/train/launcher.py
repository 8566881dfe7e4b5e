"""What the launcher (Composer's, torchrun, or Slurm's srun) tells a training process about its place in the job.

Standard library only: `bertforge train` reads the world size before it imports torch, to check the run first.
"""

from __future__ import annotations

import os

from bertforge.errors import ConfigError


def adopt_launcher_environment(env=os.environ) -> None:
    """Give Composer the variables it reads (RANK, LOCAL_RANK, NODE_RANK, ...) under the names launchers use.

    Composer's own launcher sets them all. torchrun calls the node's rank GROUP_RANK. Under Slurm, srun itself is
    the launcher, one task per rank: the batch script exports the rendezvous (MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE, LOCAL_WORLD_SIZE) and each task's own ranks come from SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID.
    """
    if "NODE_RANK" not in env and "GROUP_RANK" in env:
        env["NODE_RANK"] = env["GROUP_RANK"]
    if "RANK" not in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        if env.get("WORLD_SIZE") != env.get("SLURM_NTASKS"):
            raise ConfigError(f"Slurm started {env.get('SLURM_NTASKS')} tasks but WORLD_SIZE is "
                              f"{env.get('WORLD_SIZE')}; launch one task per rank (srun --ntasks-per-node=RANKS, "
                              f"as the script of `bertforge slurm` does)")
        env.update(RANK=env["SLURM_PROCID"], LOCAL_RANK=env["SLURM_LOCALID"], NODE_RANK=env["SLURM_NODEID"])


def launcher_world_size(env=os.environ) -> int:
    """The number of ranks of this job, as the launcher set it (1 when started without one)."""
    return int(env.get("WORLD_SIZE", 1))

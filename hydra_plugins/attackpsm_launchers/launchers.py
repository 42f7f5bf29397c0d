"""submitit's launchers with :class:`attackpsm.cluster.SubmitsPendingShards`: a re-run of a
sweep submits only the shards with work left (``hydra/launcher=slurm`` and ``local``)."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from attackpsm.cluster import SubmitsPendingShards


class SlurmLauncher(SubmitsPendingShards, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one job array of the shards with work left."""


class LocalLauncher(SubmitsPendingShards, submitit_launcher.LocalLauncher):
    """``hydra/launcher=local``: one local process per shard with work left."""

"""Cluster sweeps: shards as a sweep axis, end-of-sweep merge, one W&B aggregate per run.

A sweep (``-m``) runs through Hydra's basic sweeper and, with ``hydra/launcher=slurm`` or
``hydra/launcher=local``, through hydra-submitit-launcher (one SLURM job array). Three
pieces make it a study that can be killed and resumed at any point:

* ``conf/hydra/default.yaml`` sets ``hydra.sweeper.params`` to
  ``shard.index: range(0,${shard.count})``, so ``shard.count=N`` gives N jobs per
  configuration without the user writing the range (an explicit ``shard.index=...`` wins).
* Every job is :func:`attackpsm.job.run.run`, which keys its results by the run's identity,
  checkpoints each batch, resumes an unfinished shard and skips a finished one
  (:func:`attackpsm.storage.finished_shard`: no computation, no new W&B run). A task that
  SLURM preempts, times out (submitit requeues it) or kills loses at most the batch in flight.
* :class:`attackpsm.cluster.callback.SweepCallback` (``hydra.callbacks.sweep``): before the
  sweep it refuses what cannot work; in each job it records the job's run directory under
  ``<sweep dir>/.runs/``; after the sweep it merges every run's shards, writes the per-run
  and sweep-wide summary tables and logs one W&B *aggregate* run per run identity (the
  shards' runs share its group).

The launchers (``hydra_plugins/attackpsm_launchers``) leave finished shards out of a re-run's
job array and record them (:func:`attackpsm.cluster.records.write_record`) as their jobs
would have done. After a sweep that failed or was killed, the same end-of-sweep step is the
command line of :mod:`attackpsm.commands.cluster`::

    python -m attackpsm cluster merge logs/multiruns/<date>    # a sweep directory
    python -m attackpsm cluster merge results                   # every run under a results dir

Modules: :mod:`~attackpsm.cluster.records` (the job records of a sweep),
:mod:`~attackpsm.cluster.merge` (the end of a sweep: merges, its tables, its screen),
:mod:`~attackpsm.cluster.aggregate` (its W&B aggregate and sweep runs) and
:mod:`~attackpsm.cluster.callback` (the Hydra callback). Their numbers are computed in
:mod:`attackpsm.summary`.
"""

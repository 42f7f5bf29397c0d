"""Storage of runs: identity and directory, shards and checkpoints, leases, merging.

Everything a run writes or reads back goes through this package, and everything it
writes is written once, atomically (:mod:`~attackpsm.locks`). Layout of a run
directory (keyed by the run's identity, including the data fingerprint)::

    <results_dir>/<dataset>/<metric>/<attack>/res<size>-<hash>/
        identity.yaml                       what the hash covers
        shard-00000-of-00002.lease          the writer holding an unfinished shard
        shard-00000-of-00002.parts/         the shard's plan and one checkpoint per batch
        shard-00000-of-00002.parquet        a finished shard's per-triplet rows
        shard-00000-of-00002.errors.parquet triplets skipped (id, reason)
        results.parquet, errors.parquet     all shards merged (once every shard is done)
        merged.json                         their checksums, row counts, fingerprint
        summary.csv, summary.md             the paper's Table-2 layout
        table1.csv, table1.md               attack=none only: the paper's Table 1

A finished shard is never recomputed; an unfinished one resumes at its first batch
without a valid checkpoint; a shard is written by one process at a time (its lease).
Finished files are reused only when they check out (their checksums, row counts, ids and
data fingerprint); otherwise they are rebuilt from the parts or the shards, or the shard is
computed again, and a line says which. Every YAML or JSON file read back is plain data
(:mod:`~attackpsm.storage.records`).
"""

from attackpsm.storage.identity import (
    RunDirs,
    build_dataset,
    data_fingerprint,
    identity_hash,
    read_identity,
    run_dir_for,
    run_identity,
    write_identity,
)
from attackpsm.storage.lease import Lease, LeaseHeld, LeaseLost
from attackpsm.storage.records import RecordError, load_record
from attackpsm.storage.runs import (
    RunStatus,
    finished_shard,
    load_results,
    merge_run,
    merge_shards,
    read_run,
    run_status,
    shard_counts,
    verify_merged,
)
from attackpsm.storage.shards import ShardStore, StorageError

__all__ = [
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "RunDirs",
    "RecordError",
    "RunStatus",
    "ShardStore",
    "StorageError",
    "build_dataset",
    "data_fingerprint",
    "finished_shard",
    "identity_hash",
    "load_record",
    "load_results",
    "merge_run",
    "merge_shards",
    "read_identity",
    "read_run",
    "run_dir_for",
    "run_identity",
    "run_status",
    "shard_counts",
    "verify_merged",
    "write_identity",
]

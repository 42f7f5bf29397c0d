"""A run directory as a whole: merging its shards, its status, its merged tables.

A merge reads every finished shard and checks, before writing anything, that all of them
are of the same data (the fingerprint in each shard file and in ``identity.yaml``) and
that together they hold each of the run's triplets exactly once (the ids each shard
file records as expected). It then writes ``errors.parquet``, the summaries and, last,
``results.parquet``: a merged run is one whose ``results.parquet`` is at least as new as
its newest shard. Merges of the same run may run at once (every file is written under a
unique temporary name and renamed); each writes the same content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from omegaconf import DictConfig

from attackpsm.locks import remove_abandoned, sha256_file, write_bytes_atomic, write_text_atomic
from attackpsm.storage.identity import read_identity, run_dir_for
from attackpsm.storage.records import RecordError, load_mapping
from attackpsm.storage.shards import (
    ShardStore,
    StorageError,
    checksum_problem,
    describe_damage,
    parquet_bytes,
    read_meta,
    set_aside,
)
from attackpsm.summary.accuracy import clean_accuracy, clean_accuracy_markdown
from attackpsm.summary.headline import headline
from attackpsm.summary.results import ERROR_COLUMNS, summarize, summary_markdown
from attackpsm.summary.statistics import flip_counts, rate

log = logging.getLogger("attackpsm")

RESULTS, ERRORS = "results.parquet", "errors.parquet"
MERGED = "merged.json"  # what the merge wrote: checksums, row counts, fingerprint, shard count
_SHARD_FILE = re.compile(r"^shard-(\d{5})-of-(\d{5})(?:\.parquet|\.parts)$")


def _names(ids: list[str], limit: int = 5) -> str:
    return ", ".join(map(str, ids[:limit])) + (
        f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    )


def merge_shards(run_dir: Path, count: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Merge the ``count`` shards of a run and write its tables; ``None`` while one is unfinished.

    Raises:
        StorageError: shards of different data, or triplets missing or present twice; the
            message names them. Nothing is written then.
    """
    run_dir = Path(run_dir)
    loaded = []
    for i in range(count):
        got = ShardStore(run_dir, i, count).load()
        if got is None:
            return None
        loaded.append(got)
    identity = read_identity(run_dir)
    prints = {"identity.yaml": identity.get("data_fingerprint")}
    prints.update(
        {f"shard {i}": meta.get("fingerprint") for i, (_, _, meta) in enumerate(loaded) if meta}
    )
    known = {k: v for k, v in prints.items() if v}
    if len(set(known.values())) > 1:
        raise StorageError(
            f"{run_dir}: refusing to merge shards of different data (data fingerprints: "
            + ", ".join(f"{k} {v}" for k, v in known.items())
            + "). The data changed between shards; move the shards whose fingerprint differs "
            "from identity.yaml's out of this folder and re-run them."
        )
    ids = [t for r, e, _ in loaded for t in (*r["triplet_id"], *e["triplet_id"])]
    twice = sorted(t for t, n in Counter(ids).items() if n > 1)
    if twice:
        raise StorageError(
            f"{run_dir}: {len(twice)} triplets appear more than once in its shards: {_names(twice)}"
        )
    if all(meta for _, _, meta in loaded):
        expected = {t for _, _, meta in loaded for t in meta["ids"]}
        missing, extra = sorted(expected - set(ids)), sorted(set(ids) - expected)
        if missing or extra:
            raise StorageError(
                f"{run_dir}: the shards do not hold the run's triplets exactly once: "
                f"missing {_names(missing) or 'none'}; unexpected {_names(extra) or 'none'}"
            )
    else:
        log.warning("%s: shards without recorded ids (older files): merged unchecked", run_dir)
    results = pd.concat([r for r, _, _ in loaded], ignore_index=True)
    results = results.sort_values("triplet_id", kind="stable").reset_index(drop=True)
    errors = pd.concat([e for _, e, _ in loaded], ignore_index=True).reset_index(drop=True)
    remove_abandoned(run_dir)  # e.g. of a merge killed before its last rename
    meta = {"fingerprint": next(iter(known.values()), None), "count": count}
    errors_bytes, results_bytes = parquet_bytes(errors, meta), parquet_bytes(results, meta)
    write_bytes_atomic(run_dir / ERRORS, errors_bytes)
    if len(results):  # with every triplet skipped there is no table (the run says why)
        write_tables(run_dir, results, len(errors), identity)
    record = {
        "results_sha256": hashlib.sha256(results_bytes).hexdigest(),
        "errors_sha256": hashlib.sha256(errors_bytes).hexdigest(),
        "rows": len(results),
        "errors": len(errors),
        "fingerprint": meta["fingerprint"],
        "count": count,
        "run": run_dir.name,
        "shards": _shard_checksums(run_dir, count),
    }
    write_text_atomic(run_dir / MERGED, json.dumps(record, indent=1))  # vouches for the next
    write_bytes_atomic(run_dir / RESULTS, results_bytes)  # last: it marks the run merged
    return results, errors


def _shard_checksums(run_dir: Path, count: int) -> dict[str, str | None]:
    """SHA-256 of each shard file of a run (``None`` for one that is not there)."""
    out: dict[str, str | None] = {}
    for i in range(count):
        store = ShardStore(run_dir, i, count)
        for path in (store.final, store.errors_final):
            try:
                out[path.name] = sha256_file(path)
            except FileNotFoundError:
                out[path.name] = None
    return out


def verify_merged(run_dir: Path, count: int | None) -> str | None:
    """Why a merged run's tables do not check out against its shards, or ``None``.

    Checked: the checksums of ``results.parquet``, ``errors.parquet`` and every shard file
    against those the merge recorded in ``merged.json``, their row counts, the data
    fingerprint (theirs, ``identity.yaml``'s and every shard's), the shard count, and each
    triplet the shards expect appearing exactly once in them. With ``count`` None (a run
    directory copied without its shard files) only what needs no shard is checked.

    Raises:
        RecordError: ``identity.yaml`` or a shard's metadata is not plain data.
    """
    run_dir = Path(run_dir)
    results_path, errors_path = run_dir / RESULTS, run_dir / ERRORS
    try:
        record = load_mapping(run_dir / MERGED)
    except FileNotFoundError:
        return f"no {MERGED} (merged by an older version, or the merge was interrupted)"
    except RecordError as exc:
        return str(exc)
    changed = checksum_problem(
        record, {"results_sha256": results_path, "errors_sha256": errors_path}
    )
    if changed:
        return changed
    if count is not None and record.get("shards") != _shard_checksums(run_dir, count):
        return "a shard file changed since the merge"
    identity = read_identity(run_dir)
    try:
        meta = read_meta(results_path) or {}
        ids = pd.read_parquet(results_path, columns=["triplet_id"])["triplet_id"].tolist()
        skipped = pd.read_parquet(errors_path, columns=["triplet_id"])["triplet_id"].tolist()
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage
        return describe_damage(exc)
    if (len(ids), len(skipped)) != (record.get("rows"), record.get("errors")):
        return (
            f"{RESULTS} has {len(ids)} rows and {ERRORS} {len(skipped)}; the merge wrote "
            f"{record.get('rows')} and {record.get('errors')}"
        )
    if count is not None and (record.get("count") != count or meta.get("count") != count):
        return f"it was merged from {record.get('count')} shards, not {count}"
    if record.get("run") != run_dir.name:
        return f"it was merged in {record.get('run')}, not in {run_dir.name}"
    prints = {
        f"{RESULTS}": meta.get("fingerprint"),
        MERGED: record.get("fingerprint"),
        "identity.yaml": identity.get("data_fingerprint"),
    }
    expected: set[str] = set()
    rows_in_shards = 0
    for i in range(count or 0):
        store = ShardStore(run_dir, i, count)
        try:
            shard_meta = read_meta(store.final)
            rows_in_shards += pq.read_metadata(store.final).num_rows
        except RecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - gone or damaged: the merge repairs it
            return f"{store.final.name}: {describe_damage(exc)}"
        if shard_meta:
            prints[f"shard {i}"] = shard_meta.get("fingerprint")
            expected.update(shard_meta.get("ids") or [])
    if len({v for v in prints.values() if v}) > 1 or not prints[RESULTS]:
        return "data fingerprints differ: " + ", ".join(f"{k} {v}" for k, v in prints.items())
    if count is not None and rows_in_shards != len(ids):
        return f"{RESULTS} has {len(ids)} rows, the shards {rows_in_shards}"
    both = [*ids, *skipped]
    twice = sorted(t for t, n in Counter(both).items() if n > 1)
    if twice:
        return f"triplets appear more than once: {_names(twice)}"
    if expected and set(both) != expected:
        missing, extra = sorted(expected - set(both)), sorted(set(both) - expected)
        return f"missing {_names(missing) or 'none'}; unexpected {_names(extra) or 'none'}"
    return None


def write_tables(run_dir: Path, results: pd.DataFrame, skipped: int, identity: dict) -> None:
    """``summary.csv``/``summary.md`` (Table 2) and, for ``attack=none``, ``table1.*`` (Table 1)."""
    metric = identity.get("metric", {}).get("name", "metric")
    attack = identity.get("attack", {}).get("name", "attack")
    summary = summarize(results, metric, attack, skipped=skipped)
    write_text_atomic(run_dir / "summary.csv", summary.to_csv(index=False))
    write_text_atomic(run_dir / "summary.md", summary_markdown(summary))
    if attack == "none":  # the clean metric: 2AFC score and accuracy
        table1 = clean_accuracy(results, metric)
        write_text_atomic(run_dir / "table1.csv", table1.to_csv(index=False))
        write_text_atomic(run_dir / "table1.md", clean_accuracy_markdown(table1))


def load_results(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """A merged run's ``results.parquet`` and ``errors.parquet``; ``None`` if not merged.

    They are reused only when they check out against the shards (:func:`verify_merged`;
    without a complete set of shard files, e.g. copied without them: against
    ``merged.json`` alone);
    otherwise, and when they cannot be read, they are set aside and merged again from the
    shards, and a line says so.

    Raises:
        StorageError: merged files that do not check out and no complete set of shards to
            rebuild them; the message says what to re-run.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS
    if not path.exists():
        return None
    complete = [c for c in shard_counts(run_dir) if run_status(run_dir, c).complete]
    damaged = path
    try:
        results = pd.read_parquet(path)
        errors = (
            pd.read_parquet(run_dir / ERRORS)
            if (run_dir / ERRORS).exists()
            else pd.DataFrame(columns=ERROR_COLUMNS)
        )
    except Exception as exc:  # noqa: BLE001 - any damage: rebuild from the shards
        problem = describe_damage(exc)
        try:
            pd.read_parquet(path)
            damaged = run_dir / ERRORS
        except Exception:  # noqa: BLE001
            damaged = path
    else:  # readable: reused only when it checks out against the shards
        # without a complete set of shards (copied without them): merged.json alone
        problem = verify_merged(run_dir, complete[0] if complete else None)
        if problem is None:
            return results, errors
        if problem.startswith(ERRORS):
            damaged = run_dir / ERRORS
    if not complete:
        raise StorageError(
            f"{damaged}: cannot be checked ({problem}), and no complete set of shards is left "
            "to merge it from: re-run the run's shards (finished ones are reused)"
        )
    set_aside(damaged, problem, "merged again from the shards")
    return merge_shards(run_dir, complete[0])


# --- state of one run directory -----------------------------------------------------------


@dataclass
class RunStatus:
    """Progress of one run identity split into ``count`` shards."""

    run_dir: Path
    count: int
    finished: list[int] = field(default_factory=list)
    partial: dict[int, int] = field(default_factory=dict)  # shard -> triplets checkpointed
    merged: bool = False
    samples: int = 0
    flip_rate: float = float("nan")
    problem: str = ""  # why the shards could not be merged (see merge_shards)

    @property
    def complete(self) -> bool:
        return len(self.finished) == self.count

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.finished]


def shard_counts(run_dir: Path) -> list[int]:
    """The shard counts a run directory holds shards of (usually exactly one)."""
    found = {
        int(m.group(2)) for p in Path(run_dir).glob("shard-*") if (m := _SHARD_FILE.match(p.name))
    }
    return sorted(found)


def run_status(run_dir: Path, count: int) -> RunStatus:
    status = RunStatus(Path(run_dir), count)
    for index in range(count):
        store = ShardStore(status.run_dir, index, count)
        if store.finished:
            status.finished.append(index)
        elif store.parts.exists():
            status.partial[index] = len(store.done_ids())
    merged = status.run_dir / RESULTS
    if status.complete and merged.exists():
        try:  # a concurrent merge may be setting it aside right now: then it is not merged
            newest_shard = max(
                ShardStore(status.run_dir, i, count).final.stat().st_mtime_ns for i in range(count)
            )
            status.merged = merged.stat().st_mtime_ns >= newest_shard
        except FileNotFoundError:
            status.merged = False
    return status


def merge_run(run_dir: Path, count: int | None = None) -> RunStatus:
    """Merge a run's shards and write its summary, unless that is already up to date.

    Args:
        run_dir: a run directory (``<results>/<dataset>/<metric>/<attack>/res<size>-<hash>``).
        count: its shard count; by default the one found on disk (a complete one first).
    Returns:
        the run's status after merging (``merged`` is False while shards are missing).
    Raises:
        StorageError: the shards cannot be merged (see :func:`merge_shards`).
    """
    run_dir = Path(run_dir)
    if count is None:
        counts = shard_counts(run_dir) or [1]
        statuses = [run_status(run_dir, c) for c in counts]
        count = next((s.count for s in statuses if s.complete), counts[0])
    status = run_status(run_dir, count)
    if status.complete:
        # reused only when it checks out (load_results); merged again when it is out of
        # date or was set aside by a concurrent merge meanwhile
        loaded = load_results(run_dir) if status.merged else None
        if loaded is None:
            loaded = merge_shards(run_dir, count)
        if loaded is None:  # a shard turned out unfinished: the status says which
            return run_status(run_dir, count)
        table = loaded[0]
        status = run_status(run_dir, count)
        status.merged = True
        status.samples = len(table)
        counts = flip_counts(table)
        status.flip_rate = rate(counts["flipped"], counts["samples"])
    return status


def finished_shard(cfg: DictConfig, fingerprint: str) -> dict[str, Any] | None:
    """What a re-run of an already finished shard returns, without computing anything.

    ``None`` when the shard still has work to do. A finished shard opens no W&B run (it
    has one already) and rewrites no file; it only merges the run when it is the last
    piece missing from the merge.

    Args:
        cfg: the run's config.
        fingerprint: the data fingerprint of its dataset (results of other data never count).
    """
    run_dir = run_dir_for(cfg, fingerprint)
    store = ShardStore(run_dir, cfg.shard.index, cfg.shard.count)
    if not store.finished:
        return None
    status = merge_run(run_dir, cfg.shard.count)
    log.info(
        "shard %d/%d already finished in %s: nothing to do",
        cfg.shard.index,
        cfg.shard.count,
        run_dir,
    )
    loaded = load_results(run_dir) if status.merged else None
    if loaded is not None:
        table, errors = loaded
        print(f"\n{run_dir.resolve()} (all shards, already done)")
        summary = run_dir / "summary.md"
        if summary.exists():
            print(summary.read_text())
    else:
        shard = store.load()
        if shard is None:  # its file was damaged beyond repair: compute it again
            return None
        table, errors, _ = shard
        print(
            f"\n{run_dir.resolve()} (shard {cfg.shard.index}/{cfg.shard.count}, already done; missing shards {status.missing})"
        )
    return {**headline(table, len(errors)), "run_dir": str(run_dir)}


def read_run(run_dir: Path) -> tuple[pd.DataFrame, int, bool] | None:
    """A run's per-triplet table for reports: ``(results, skipped, complete)``.

    The merged table when there is one, else the finished shards (``complete`` False);
    ``None`` when no shard has finished.
    """
    run_dir = Path(run_dir)
    loaded = load_results(run_dir)
    if loaded is not None:
        return loaded[0], len(loaded[1]), True
    frames, skipped = [], 0
    for count in shard_counts(run_dir):
        for i in range(count):
            got = ShardStore(run_dir, i, count).load()
            if got is not None:
                frames.append(got[0])
                skipped += len(got[1])
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True), skipped, False

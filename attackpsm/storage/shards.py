"""One shard of a run: its plan, its checkpoint parts, its finished files.

Files of shard ``i`` of ``n`` inside a run directory::

    shard-<i>-of-<n>.lease            the writer holding the shard (see lease.py)
    shard-<i>-of-<n>.parts/shard.json the shard's triplet ids in order and the data fingerprint
    shard-<i>-of-<n>.parts/finished.json
                                      checksums of the shard's two files, written as it finishes
    shard-<i>-of-<n>.parts/part-<start>-<stop>.parquet
                                      checkpoint of the batch at positions [start, stop)
    shard-<i>-of-<n>.errors.parquet   the shard's skipped triplets (id, reason)
    shard-<i>-of-<n>.parquet          the shard's per-triplet rows (written last: "finished")

A part is named by its batch's *position* in the shard, so a re-run writes a missing
batch under the same name and a lost part is a gap in the positions, found and recomputed.
A part that cannot be read, or holds other triplets than its positions, is renamed
``*.corrupt`` and its batch recomputed. Parts are kept after the shard finishes: a
damaged shard file is rebuilt from them, and so is one that is readable but not the file
written when the shard finished (its checksum). The damaged file stays in place until its
rebuilt copy replaces it, so a merge running meanwhile never finds the shard missing. Each
repair logs one line saying what it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attackpsm.locks import remove_abandoned, sha256_file, write_bytes_atomic, write_text_atomic
from attackpsm.storage.lease import Lease
from attackpsm.summary.results import BASE_COLUMNS, ERROR_COLUMNS

log = logging.getLogger("attackpsm")

META_KEY = b"attackpsm"  # parquet schema metadata: fingerprint and expected ids of a shard
PLAN = "shard.json"
FINISHED = "finished.json"  # checksums of the shard's files, written as it finishes
_PART = re.compile(r"^part-(\d{7})-(\d{7})\.parquet$")


class StorageError(RuntimeError):
    """Stored results that cannot be used as they are; the message names what and why."""


def parquet_bytes(frame: pd.DataFrame, meta: dict[str, Any] | None = None) -> bytes:
    """``frame`` (no index) as the bytes of a Parquet file, ``meta`` in its schema metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()}
        )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_parquet(frame: pd.DataFrame, path: Path, meta: dict[str, Any] | None = None) -> str:
    """Write ``frame`` (no index) atomically, with ``meta`` in the file's schema metadata.

    Returns:
        the SHA-256 of the bytes written.
    """
    data = parquet_bytes(frame, meta)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def checksum_problem(record: dict[str, Any], files: dict[str, Path]) -> str | None:
    """Why files differ from the checksums ``record`` holds for them, or ``None``."""
    for key, path in files.items():
        want = record.get(key)
        if not isinstance(want, str):
            return f"its checksum record has no {key}"
        try:
            got = sha256_file(path)
        except FileNotFoundError:
            return f"{path.name} is gone"
        if got != want:
            return (
                f"{path.name} is not the file written when it was finished "
                f"(SHA-256 {got[:12]}, recorded {want[:12]})"
            )
    return None


def read_meta(path: Path) -> dict[str, Any] | None:
    """The metadata :func:`write_parquet` stored (``None`` for files written without it)."""
    from attackpsm.storage.records import parse_record

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if not raw:
        return None
    meta = parse_record(raw.decode("utf-8", "replace"), f"{path} (metadata)", fmt="json")
    return meta if isinstance(meta, dict) else None


def set_aside(path: Path, problem: str, action: str, keep: bool = False) -> Path:
    """Rename a damaged file to ``<name>.corrupt`` (kept for inspection) and say so in one line.

    With ``keep`` the file stays in place as well (a hard link, or a copy), to be replaced
    atomically by its repair: a reader never finds it missing while it is being repaired.
    """
    aside = path.with_name(path.name + ".corrupt")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{n}")
        n += 1
    try:
        if not keep:
            path.rename(aside)
        else:
            try:
                os.link(path, aside)
            except FileExistsError:  # another process set it aside under this name
                return aside
            except OSError:  # no hard links on this file system
                shutil.copy2(path, aside)
    except FileNotFoundError:  # another process set it aside first
        return aside
    log.warning("%s: %s; set aside as %s, %s", path, problem, aside.name, action)
    return aside


def describe_damage(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text.split(": ", 1)[-1] if "Could not open" in text else text  # drop the path
    return f"unreadable ({type(exc).__name__}: {text[:160]})"


class ShardStore:
    """Checkpointed storage of shard ``index`` of ``count`` of one run (module docstring)."""

    def __init__(self, run_dir: Path, index: int, count: int):
        self.run_dir = Path(run_dir)
        self.index, self.count = index, count
        self.stem = f"shard-{index:05d}-of-{count:05d}"
        self.final = self.run_dir / f"{self.stem}.parquet"
        self.errors_final = self.run_dir / f"{self.stem}.errors.parquet"
        self.parts = self.run_dir / f"{self.stem}.parts"
        self.lease_path = self.run_dir / f"{self.stem}.lease"

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count}"

    @property
    def finished(self) -> bool:
        return self.final.exists()

    def lease(self, stale_s: float = 600.0, wait_s: float = 60.0) -> Lease:
        return Lease(self.lease_path, stale_s=stale_s, wait_s=wait_s)

    # --- the plan: which triplets, in which order, of which data ----------------------------

    def start(self, ids: list[str], fingerprint: str) -> None:
        """Record the shard's triplet ids (in order) and data fingerprint before any batch."""
        self.parts.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.parts)  # of a writer killed between a write and its rename
        plan = {"ids": list(ids), "fingerprint": fingerprint}
        if self.plan() != plan:
            write_text_atomic(self.parts / PLAN, json.dumps(plan))

    def plan(self) -> dict[str, Any] | None:
        from attackpsm.storage.records import RecordError, load_record

        path = self.parts / PLAN
        try:
            plan = load_record(path)
            if not isinstance(plan, dict) or not isinstance(plan.get("ids"), list):
                raise RecordError(f"{path}: not a shard plan (a mapping with a list of ids)")
            return plan
        except FileNotFoundError:
            return None
        except RecordError as exc:
            set_aside(path, str(exc), "it is written again when the shard runs")
            return None

    # --- checkpoint parts --------------------------------------------------------------------

    def _part_files(self) -> list[tuple[int, int, Path]]:
        if not self.parts.exists():
            return []
        found = []
        for p in sorted(self.parts.iterdir()):
            m = _PART.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), p))
        return found

    def part_path(self, start: int, stop: int) -> Path:
        return self.parts / f"part-{start:07d}-{stop:07d}.parquet"

    def done_ids(self) -> set[str]:
        """Ids of the readable checkpoint parts (results and recorded errors)."""
        done: set[str] = set()
        for _, _, f in self._part_files():
            try:
                done.update(pd.read_parquet(f, columns=["triplet_id"])["triplet_id"])
            except Exception:  # noqa: BLE001 - a damaged part counts as not done
                continue
        return done

    def checkpointed(self) -> pd.DataFrame | None:
        """All readable checkpoint parts' rows (results and recorded errors), or ``None``.

        Parts stay after a shard finishes, so this is every attempt's work so far.
        """
        frames = []
        for _, _, f in self._part_files():
            try:
                frames.append(pd.read_parquet(f))
            except Exception:  # noqa: BLE001 - a damaged part counts as not done
                continue
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else None

    def _valid_parts(self, ids: list[str]) -> list[tuple[int, int, pd.DataFrame]]:
        """Parts that read and hold exactly the triplets of their positions; others set aside."""
        valid = []
        for start, stop, path in self._part_files():
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # noqa: BLE001 - any damage: set aside, recompute
                set_aside(path, describe_damage(exc), f"positions {start}-{stop} are recomputed")
                continue
            got = list(frame["triplet_id"]) if "triplet_id" in frame else []
            if stop > len(ids) or sorted(got) != sorted(ids[start:stop]):
                set_aside(
                    path,
                    f"holds other triplets than positions {start}-{stop} of the shard",
                    "they are recomputed",
                )
                continue
            valid.append((start, stop, frame))
        return valid

    def pending(self, batch_size: int) -> list[tuple[int, int]]:
        """Position ranges still to compute, as batches of at most ``batch_size``.

        Positions no valid part covers, split at the batch size from each uncovered run:
        a gap left by a lost or damaged part is recomputed under the same part name.
        """
        plan = self.plan()
        if plan is None:
            raise StorageError(f"{self.parts}: no {PLAN}; call start() first")
        ids = plan["ids"]
        covered = [False] * len(ids)
        for start, stop, _ in self._valid_parts(ids):
            covered[start:stop] = [True] * (stop - start)
        batches, pos = [], 0
        while pos < len(ids):
            if covered[pos]:
                pos += 1
                continue
            end = pos
            while end < len(ids) and not covered[end] and end - pos < batch_size:
                end += 1
            batches.append((pos, end))
            pos = end
        done = sum(covered)
        gaps = [b for b in batches if any(covered[b[1] :])]  # missing batches before done ones
        if gaps:
            log.warning(
                "%s: positions %s had no valid checkpoint (a part lost or set aside): recomputing",
                self.name,
                ", ".join(f"{a}-{b}" for a, b in gaps),
            )
        if done:
            log.info("resuming %s: %d done, %d to go", self.name, done, len(ids) - done)
        return batches

    def checkpoint(self, start: int, stop: int, rows: pd.DataFrame, errors: pd.DataFrame) -> None:
        """Persist the batch at positions ``[start, stop)``: result rows and error rows."""
        self.parts.mkdir(parents=True, exist_ok=True)
        frame = (
            pd.concat(
                [
                    rows.assign(error=None),
                    errors.assign(error=errors["reason"]).drop(columns="reason"),
                ],
                ignore_index=True,
            )
            if len(errors)
            else rows.assign(error=None)
        )
        write_parquet(frame, self.part_path(start, stop))

    # --- finished shard ----------------------------------------------------------------------

    def finalize(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write the shard's files from its parts, after checking they cover every triplet.

        The parts are kept (a damaged shard file is rebuilt from them); only this shard's
        own files are written, nothing of another writer is deleted.
        """
        plan = self.plan()
        if plan is None:
            raise StorageError(f"{self.name} of {self.run_dir}: no {PLAN} to finalize against")
        ids = plan["ids"]
        parts = self._valid_parts(ids)
        frames = [f for _, _, f in sorted(parts, key=lambda p: p[0])]
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=[*BASE_COLUMNS, "error"])
        )
        frame = frame.drop_duplicates("triplet_id", keep="first")  # overlapping batch sizes
        missing = sorted(set(ids) - set(frame["triplet_id"]))
        if missing:
            raise StorageError(
                f"{self.name} of {self.run_dir}: {len(missing)} of {len(ids)} triplets have "
                f"no checkpoint (first: {missing[:5]}); re-run the shard to compute them"
            )
        is_err = frame["error"].notna()
        errors = frame.loc[is_err, ["triplet_id", "subset", "error"]].rename(
            columns={"error": "reason"}
        )
        # all-empty columns stay (e.g. FGSM's eps_found when nothing flipped, judge without labels)
        results = frame.loc[~is_err].drop(columns="error")
        results = results.sort_values("triplet_id", kind="stable").reset_index(drop=True)
        errors = errors.sort_values("triplet_id", kind="stable").reset_index(drop=True)
        meta = {
            "fingerprint": plan["fingerprint"],
            "index": self.index,
            "count": self.count,
            "ids": sorted(ids),
        }
        errors_bytes, results_bytes = parquet_bytes(errors, meta), parquet_bytes(results, meta)
        record = {
            "results_sha256": hashlib.sha256(results_bytes).hexdigest(),
            "errors_sha256": hashlib.sha256(errors_bytes).hexdigest(),
            "rows": len(results),
            "errors": len(errors),
        }
        write_text_atomic(self.parts / FINISHED, json.dumps(record))  # before: it vouches
        write_bytes_atomic(self.errors_final, errors_bytes)
        write_bytes_atomic(self.final, results_bytes)  # last: its existence means "finished"
        return results, errors

    def verify(self) -> str | None:
        """Why the finished shard's files are not the ones written when it finished, or
        ``None`` when they check out (or were written without a checksum record)."""
        from attackpsm.storage.records import RecordError, load_mapping

        try:
            record = load_mapping(self.parts / FINISHED)
        except FileNotFoundError:
            return None  # finished before checksums were recorded: checked by the merge
        except RecordError as exc:
            return str(exc)
        return checksum_problem(
            record, {"results_sha256": self.final, "errors_sha256": self.errors_final}
        )

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None] | None:
        """The finished shard: results, errors and its metadata; ``None`` if unfinished.

        A shard file that cannot be read is set aside and rebuilt from the parts; when they
        do not cover the shard, the shard counts as unfinished (a re-run computes the rest).
        """
        if not self.finished:
            return None
        try:
            results = pd.read_parquet(self.final)
            meta = read_meta(self.final)
            errors = (
                pd.read_parquet(self.errors_final)
                if self.errors_final.exists()
                else pd.DataFrame(columns=ERROR_COLUMNS)
            )
        except Exception as exc:  # noqa: BLE001 - any damage: rebuild from what is intact
            problem = describe_damage(exc)
            final_ok = True
            try:
                pd.read_parquet(self.final)
            except Exception:  # noqa: BLE001
                final_ok = False
            damaged = self.errors_final if final_ok else self.final
        else:
            changed = self.verify()  # readable, but are they the files written at the finish?
            if changed is None:
                return results, errors, meta
            problem = changed
            damaged = (
                self.errors_final if changed.startswith(self.errors_final.name) else self.final
            )
        plan = self.plan()
        if plan is not None and set(self.done_ids()) >= set(plan["ids"]):
            # the damaged file stays until the rebuilt one replaces it: a merge running
            # meanwhile finds the shard finished, never missing
            set_aside(damaged, problem, "rebuilt from the checkpoint parts", keep=True)
            results, errors = self.finalize()
            return results, errors, read_meta(self.final)
        # no parts to rebuild from: the shard is unfinished again, a re-run recomputes it
        set_aside(
            damaged,
            problem,
            "no checkpoint parts cover the shard: it is unfinished, a re-run recomputes it",
        )
        for partner in (self.final, self.errors_final):
            if partner.exists():
                partner.rename(partner.with_name(partner.name + ".orphan"))
        return None

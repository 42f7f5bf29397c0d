"""Read the records of a W&B offline run file (``offline-run-*/run-*.wandb``).

The file is a 7-byte W&B header followed by a LevelDB-style log: 32 KiB blocks of
records, each with a 7-byte header (crc32, little-endian length, type: 1 full, 2 first,
3 middle, 4 last) whose payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pos, chunk = [], HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        chunk = payload if kind in (1, 2) else chunk + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


def summary(path: str | Path) -> dict:
    """The run's final summary values (key -> decoded JSON)."""
    values: dict = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                values[_item_key(item)] = json.loads(item.value_json)
    return values


def wait_for_summary(path: str | Path, key: str, timeout: float = 60.0) -> dict:
    """The summary once ``key`` is in it: the W&B service may still be flushing the file
    for a short while after ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        values = summary(path)
        if key in values or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def run_info(path: str | Path) -> dict:
    """Id, group, job type, name and config keys of the run."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return {
                "id": rec.run.run_id,
                "group": rec.run.run_group,
                "job_type": rec.run.job_type,
                "name": rec.run.display_name,
                "config": {i.key: json.loads(i.value_json) for i in rec.run.config.update},
            }
    raise ValueError(f"{path} has no run record")


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def history(path: str | Path) -> list[dict]:
    """The run's history records in file order (key -> decoded JSON; ``_step`` included)."""
    out = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            row = {_item_key(i): json.loads(i.value_json) for i in rec.history.item}
            if rec.history.HasField("step"):
                row.setdefault("_step", rec.history.step.num)
            out.append(row)
    return out


def metric_definitions(path: str | Path) -> dict[str, dict]:
    """``define_metric`` records: name or glob -> step metric and summary aggregation."""
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "metric":
            m = rec.metric
            out[m.name or m.glob_name] = {
                "step_metric": m.step_metric,
                "summary_last": m.summary.last,
            }
    return out


# --- W&B's own reader ---------------------------------------------------------------------------


def leet(path: str | Path, summary: bool = False) -> list[dict] | dict:
    """A run file read by W&B's own reader, ``wandb leet inspect --json``: the records (one
    JSON object each) or, with ``summary``, the run's final state, summary and config."""
    import shutil
    import subprocess
    import sys

    wandb_cli = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    cmd = [wandb_cli, "leet", "inspect", "--json", *(["--summary"] if summary else []), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:  # e.g. a wandb without `leet inspect` (0.31.0 has it)
        import wandb

        raise RuntimeError(f"{' '.join(cmd)} (wandb {wandb.__version__}): {proc.stderr[-2000:]}")
    out = proc.stdout
    if summary:
        return json.loads(out)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flat(config: dict, prefix: str = "") -> dict:
    """Nested config as W&B's run table shows it: dotted keys."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out

"""The paper's published numbers, for the comparison columns of the report.

The numbers ship inside the package as ``paper_tables.json``; nothing outside the package
is read at run time. That file is generated from the plain-text rows of the paper's
tables (one ``## [i] Table N: ...`` block per table, cells separated by ``' | '``), read as
:data:`TABLES` describes each table::

    python -m attackpsm paper-tables path/to/tables.txt      # rewrites paper_tables.json

Each record is one row of one table: where it applies (``table``, ``dataset``,
``resolution``, ``metric``, ``attack``, attack ``params``, ``agrees`` = ✓/✗) and its
``values`` (``samples``, ``flipped``, ``flipped_pct``, ``rmse_mean``, ...; the names of
:func:`attackpsm.summary.statistics.flip_stats`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

DATA_FILE = "paper_tables.json"

# Paper spelling (after dropping citations) -> config name (``metric=<name>``).
METRIC_NAMES = {
    "l2": "l2",
    "ssim": "ssim",
    "ms-ssim": "ms_ssim",
    "cwssim": "cw_ssim",
    "cw-ssim": "cw_ssim",
    "fsimc": "fsimc",
    "wadiqam-fr": "wadiqam_fr",
    "gti-cnn": "gti_cnn",
    "lpips(squz.)": "lpips_squeeze",
    "lpips(squeeze)": "lpips_squeeze",
    "lpips(alex)": "lpips_alex",
    "lpips(vgg)": "lpips_vgg",
    "e-lpips": "elpips_vgg",
    "dists": "dists",
    "watson-dft": "watson_dft",
    "pim-1": "pim1",
    "pim-5": "pim5",
    "a-dists": "adists",
    "st-lpips(alex)": "stlpips_alex",
    "st-lpips(vgg)": "stlpips_vgg",
    "swiniqa": "swiniqa",
    "pieapp": "pieapp",
}

# Config name -> how tables and figures print it.
DISPLAY_NAMES = {
    "l2": "L2",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "cw_ssim": "CW-SSIM",
    "fsimc": "FSIMc",
    "gmsd": "GMSD",
    "vif": "VIF",
    "haarpsi": "HaarPSI",
    "mdsi": "MDSI",
    "wadiqam_fr": "WaDIQaM-FR",
    "gti_cnn": "GTI-CNN",
    "lpips_squeeze": "LPIPS(Squeeze)",
    "lpips_alex": "LPIPS(Alex)",
    "lpips_vgg": "LPIPS(VGG)",
    "elpips_vgg": "E-LPIPS",
    "dists": "DISTS",
    "watson_dft": "Watson-DFT",
    "pim1": "PIM-1",
    "pim5": "PIM-5",
    "adists": "A-DISTS",
    "stlpips_alex": "ST-LPIPS(Alex)",
    "stlpips_vgg": "ST-LPIPS(VGG)",
    "swiniqa": "SwinIQA",
    "pieapp": "PieAPP",
}

# The paper's traditional metrics (Figure 5 colours them apart from the learned ones).
TRADITIONAL = {
    "l2",
    "ssim",
    "ms_ssim",
    "cw_ssim",
    "fsimc",
    "gmsd",
    "vif",
    "haarpsi",
    "mdsi",
    "psnr",
}

# Table 5 / Table 9 column headers -> transfer-source labels used by the report.
TRANSFER_SOURCES = {
    "pgd(10)": "PGD(10)",
    "pgd(20)": "PGD(20)",
    "stadv": "stAdv",
    "stadv + pgd(5)": "stAdv+PGD(5)",
    "stadv + pgd(10)": "stAdv+PGD(10)",
    "stadv + pgd(15)": "stAdv+PGD(15)",
    "stadv + pgd(20)": "stAdv+PGD(20)",
}


def display_name(metric: str) -> str:
    return DISPLAY_NAMES.get(metric, metric)


def metric_key(cell: str) -> str | None:
    """Config name of a paper row label such as ``'LPIPS(Alex) (Zhang et al., 2018b)'``."""
    text = re.sub(r"\([^()]*\d{4}[a-z]?\)", "", cell)  # citations "(Name et al., 2018b)"
    text = re.sub(r"\b[A-Z][a-z]+ et al\.", "", text)  # "Prashnani et al. (2018)"
    text = text.replace(" ", "").lower()
    return METRIC_NAMES.get(text)


# --- the paper's tables, described ----------------------------------------------------------
#
# ``tables.txt`` holds each table as rows of cells. Header rows end in text, data rows in a
# number. A data row with fewer cells than its table has columns omits leading ones -- the
# paper's merged cells: "✗ | 2477 | ..." continues the metric of the row above -- and
# takes them from the row above. Each data row makes one record per output of its table.

Reader = Callable[[str], dict[str, Any]]

_BAPPS = {"dataset": "bapps", "resolution": 64}

# The order of a record's values (its ``values`` keys follow it).
_VALUE_ORDER = (
    "accurate",
    "accurate_pct",
    "accuracy",
    "afc2_full",
    "samples",
    "flipped",
    "flipped_pct",
    "mean_eps",
    "pct_px_gt_0.001",
    "pct_px_gt_0.01",
    "pct_px_gt_0.03",
    "rmse_mean",
    "rmse_std",
    "psnr_mean",
    "psnr_std",
    "sim_diff_mean",
)


@dataclass(frozen=True)
class Column:
    """One column of a paper table: how its cell is read and where the result goes.

    ``into``: ``"record"`` (``metric``, ``resolution``, ``agrees``: shared by every output of
    the row), ``"params"`` (attack parameters) or ``"values"``; ``output``: the output it
    belongs to (``None``: every output of the row).
    """

    read: Reader
    into: Literal["record", "params", "values"] = "values"
    output: str | None = None


@dataclass(frozen=True)
class Output:
    """One record per data row: its attack, fixed attack parameters, and the name its
    columns give (default: the attack)."""

    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def key(self) -> str:
        return self.name or self.attack


@dataclass(frozen=True)
class PaperTable:
    """How to read Table ``number``: its columns, the records each row makes, the record
    fields no column gives (``fixed``), how many leading cells a row may omit
    (``carried``), and a header row the table must have (lower case), if any."""

    number: int
    columns: tuple[Column, ...]
    outputs: tuple[Output, ...]
    fixed: dict[str, Any] = field(default_factory=lambda: dict(_BAPPS))
    carried: int = 0
    header: tuple[str, ...] | None = None


def _count_pct(cell: str) -> tuple[int, float]:
    """``'3759/39%'`` -> ``(3759, 39.0)``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*([\d.]+)\s*%\s*", cell)
    if not m:
        raise ValueError(f"expected 'count/pct%', got {cell!r}")
    return int(m.group(1)), float(m.group(2))


def _mu_sigma(cell: str) -> tuple[float, float]:
    """``'4.3/2.0'`` -> ``(4.3, 2.0)``."""
    a, b = cell.split("/")
    return float(a), float(b)


def _agree(cell: str) -> str:
    if cell not in ("✓", "✗"):
        raise ValueError(f"expected ✓ or ✗, got {cell!r}")
    return cell


def _metric(cell: str) -> dict[str, Any]:
    metric = metric_key(cell)
    if metric is None:
        raise ValueError(f"unknown metric in paper row: {cell!r}")
    return {"metric": metric}


def _resolution(cell: str) -> dict[str, Any]:
    m = re.fullmatch(r"(\d+)x\d+", cell)
    if not m:
        raise ValueError(f"expected a resolution such as 64x64, got {cell!r}")
    return {"resolution": int(m.group(1))}


def _number(
    name: str, into: Literal["params", "values"] = "values", output: str | None = None
) -> Column:
    return Column(lambda cell: {name: float(cell)}, into, output)


def _count_pct_column(count: str, pct: str, output: str | None = None) -> Column:
    return Column(
        lambda cell: dict(zip((count, pct), _count_pct(cell), strict=True)), output=output
    )


def _flips(output: str | None = None) -> Column:
    """``#Samples Flipped``: ``'count/pct%'``."""
    return _count_pct_column("flipped", "flipped_pct", output)


_METRIC = Column(_metric, "record")
_AGREES = Column(lambda cell: {"agrees": _agree(cell)}, "record")
_RESOLUTION = Column(_resolution, "record")
_SAMPLES = Column(lambda cell: {"samples": int(cell)})
_SKIPPED = Column(lambda cell: {})
_RMSE_MU_SIGMA = Column(
    lambda cell: dict(zip(("rmse_mean", "rmse_std"), _mu_sigma(cell), strict=True))
)


def _fgsm_columns(output: str) -> tuple[Column, ...]:
    """``#Samples Flipped | Mean ε | RMSE μ | RMSE σ``."""
    names = ("mean_eps", "rmse_mean", "rmse_std")
    return (_flips(output), *(_number(n, output=output) for n in names))


def _pgd_columns(output: str) -> tuple[Column, ...]:
    """``#Samples Flipped | % pixels with ε >0.001 | >0.01 | >0.03 | RMSE μ | RMSE σ``."""
    names = ("pct_px_gt_0.001", "pct_px_gt_0.01", "pct_px_gt_0.03", "rmse_mean", "rmse_std")
    return (_flips(output), *(_number(n, output=output) for n in names))


def _psnr_columns(output: str) -> tuple[Column, ...]:
    """``PSNR μ | PSNR σ``."""
    return (_number("psnr_mean", output=output), _number("psnr_std", output=output))


_FGSM_05, _FGSM_03 = Output("fgsm", {"max_eps": 0.05}), Output("fgsm", {"max_eps": 0.03})
_PGD = Output("pgd", {"alpha": 0.001})
_ALPHA = _number("alpha", into="params")

TABLES: tuple[PaperTable, ...] = (
    # metric | 2AFC on complete BAPPS | accuracy on the subset
    PaperTable(
        1,
        (_METRIC, _number("afc2_full"), _number("accuracy")),
        (Output("none"),),
        fixed={**_BAPPS, "agrees": None},
    ),
    # FGSM (ε < 0.05) | PGD | One-pixel
    PaperTable(
        2,
        (
            _METRIC,
            _AGREES,
            _SAMPLES,
            *_fgsm_columns("fgsm"),
            *_pgd_columns("pgd"),
            _flips("onepixel"),
        ),
        (_FGSM_05, _PGD, Output("onepixel")),
        carried=1,
    ),
    # |s0 - s1|
    PaperTable(3, (_METRIC, _AGREES, _number("sim_diff_mean")), (Output("none"),), carried=1),
    # PSNR of FGSM | PGD
    PaperTable(
        4,
        (_METRIC, _AGREES, *_psnr_columns("fgsm"), *_psnr_columns("pgd")),
        (_FGSM_05, _PGD),
        carried=1,
    ),
    # transfer from LPIPS(Alex) stAdv samples, one column per source
    PaperTable(
        5,
        (
            _METRIC,
            _count_pct_column("accurate", "accurate_pct"),
            *(_flips(source) for source in TRANSFER_SOURCES.values()),
        ),
        tuple(
            Output("transfer", {"source": source}, name=source)
            for source in TRANSFER_SOURCES.values()
        ),
        fixed={**_BAPPS, "agrees": "✓"},
        header=tuple(TRANSFER_SOURCES),
    ),
    # whitebox PGD on PieAPP, then on CLIC: metric | resolution | agrees | samples | PGD
    *(
        PaperTable(
            table,
            (_METRIC, _RESOLUTION, _AGREES, _SAMPLES, *_pgd_columns("pgd")),
            (_PGD,),
            fixed={"dataset": dataset},
            carried=2,
        )
        for table, dataset in ((6, "pieapp"), (7, "clic"))
    ),
    # stAdv on LPIPS(Alex), PieAPP: resolution | samples | alpha of Eq. 4 | flipped | RMSE
    PaperTable(
        8,
        (_RESOLUTION, _SAMPLES, _ALPHA, _flips(), _RMSE_MU_SIGMA),
        (Output("stadv"),),
        fixed={"dataset": "pieapp", "metric": "lpips_alex", "agrees": "✓"},
        carried=2,
    ),
    # transfer PGD(20) on PieAPP (256x256: 1184 accurate, Table 6)
    PaperTable(
        9,
        (_METRIC, _count_pct_column("accurate", "accurate_pct"), _flips()),
        (Output("transfer", {"source": "PGD(20)"}),),
        fixed={"dataset": "pieapp", "resolution": 256, "agrees": "✓"},
    ),
    # FGSM (ε < 0.03) | PGD
    PaperTable(
        10,
        (_METRIC, _AGREES, _SAMPLES, *_fgsm_columns("fgsm"), *_pgd_columns("pgd")),
        (_FGSM_03, _PGD),
        carried=1,
    ),
    # PGD with step size alpha: metric | alpha | agrees | samples | PGD
    PaperTable(
        11,
        (_METRIC, _ALPHA, _AGREES, _SAMPLES, *_pgd_columns("pgd")),
        (Output("pgd"),),
        carried=2,
    ),
    # reverse PGD on LPIPS(Alex); first cell: the metric, or its citation on the second row
    PaperTable(
        12,
        (_SKIPPED, _AGREES, _SAMPLES, *_pgd_columns("pgd_reverse")),
        (Output("pgd_reverse"),),
        fixed={**_BAPPS, "metric": "lpips_alex"},
    ),
)


# --- the generic parser ---------------------------------------------------------------------


def _blocks(text: str) -> dict[int, list[list[str]]]:
    """Rows (lists of cells) of each ``Table N`` block, header rows included."""
    blocks: dict[int, list[list[str]]] = {}
    current: int | None = None
    for line in text.splitlines():
        head = re.match(r"## \[\d+\] Table (\d+):", line)
        if head:
            current = int(head.group(1))
            blocks[current] = []
        elif line.startswith("## "):
            current = None
        elif current is not None and line.strip() and not line.startswith("#"):
            blocks[current].append([c.strip() for c in line.split(" | ")])
    return blocks


def _is_number(cell: str) -> bool:
    return re.fullmatch(r"[\d.]+(/[\d.]+%?)?%?", cell.strip()) is not None


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    """Drop header rows: keep rows whose last cell is a number or a count/pct."""
    return [r for r in rows if _is_number(r[-1]) and len(r) > 1]


def _full_rows(table: PaperTable, rows: list[list[str]]) -> list[list[str]]:
    """The data rows of ``table`` with their omitted leading cells taken from the row above."""
    width, above, full = len(table.columns), None, []
    for row in _data_rows(rows):
        omitted = width - len(row)
        if not 0 <= omitted <= table.carried or (omitted and above is None):
            raise ValueError(
                f"Table {table.number} has {width} columns (a row may omit its first "
                f"{table.carried}), not {len(row)}: {' | '.join(row)!r}"
            )
        above = above[:omitted] + row if omitted else row
        full.append(above)
    return full


def _row_records(table: PaperTable, cells: list[str]) -> list[dict[str, Any]]:
    """The records of one full data row of ``table``."""
    fields = dict(table.fixed)
    params: dict[str | None, dict[str, Any]] = {None: {}}
    values: dict[str | None, dict[str, Any]] = {None: {}}
    for column, cell in zip(table.columns, cells, strict=True):
        read = column.read(cell)
        if column.into == "record":
            fields.update(read)
        else:
            into = params if column.into == "params" else values
            into.setdefault(column.output, {}).update(read)
    recs = []
    for out in table.outputs:
        value = {**values[None], **values.get(out.key, {})}
        recs.append(
            {
                "table": table.number,
                "dataset": fields["dataset"],
                "resolution": fields["resolution"],
                "metric": fields["metric"],
                "attack": out.attack,
                "params": {**params[None], **params.get(out.key, {}), **out.params},
                "agrees": fields["agrees"],
                "values": {k: value[k] for k in sorted(value, key=_VALUE_ORDER.index)},
            }
        )
    return recs


def parse_tables(text: str) -> list[dict[str, Any]]:
    """All records of Tables 1-12 as :data:`TABLES` describes them (figure panels skipped)."""
    blocks = _blocks(text)
    recs: list[dict[str, Any]] = []
    for table in TABLES:
        if table.number not in blocks:
            raise ValueError(f"the tables file has no '## [i] Table {table.number}:' block")
        rows = blocks[table.number]
        if table.header and table.header not in {tuple(c.lower() for c in r) for r in rows}:
            raise ValueError(
                f"Table {table.number} lacks its header row {' | '.join(table.header)!r}"
            )
        for cells in _full_rows(table, rows):
            recs.extend(_row_records(table, cells))
    return recs


@lru_cache(maxsize=1)
def records() -> tuple[dict[str, Any], ...]:
    """The shipped records (see the module docstring)."""
    text = resources.files("attackpsm.report").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return tuple(json.loads(text)["records"])


def lookup(
    table: int,
    metric: str,
    agrees: str | None = None,
    dataset: str | None = None,
    resolution: int | None = None,
    attack: str | None = None,
    **params: Any,
) -> dict[str, float] | None:
    """Values of the record of ``table`` that matches every given key, or ``None``.

    ``params`` must match the record's attack parameters where the record has them
    (floats compared with a relative tolerance).
    """
    for rec in records():
        if rec["table"] != table or rec["metric"] != metric:
            continue
        if agrees is not None and rec["agrees"] != agrees:
            continue
        if dataset is not None and rec["dataset"] != dataset:
            continue
        if resolution is not None and rec["resolution"] != resolution:
            continue
        if attack is not None and rec["attack"] != attack:
            continue
        if all(_same(rec["params"].get(k, v), v) for k, v in params.items()):
            return rec["values"]
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 + 1e-6 * abs(float(b))
    return a == b


def write_data_file(tables_txt: Path, out: Path | None = None) -> Path:
    """Parse the paper's tables file and write its records to ``out`` (default: the
    package's ``paper_tables.json``); the path written."""
    recs = parse_tables(Path(tables_txt).read_text(encoding="utf-8"))
    out = out or Path(__file__).with_name(DATA_FILE)
    payload = {
        "source": "Ghildyal & Liu, Attacking Perceptual Similarity Metrics, TMLR 2023: Tables 1-12",
        "generated_by": "python -m attackpsm paper-tables <tables.txt>",
        "records": recs,
    }
    out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out

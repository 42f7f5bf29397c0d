"""The paper's published numbers, for the comparison columns of the report.

The numbers ship inside the package as ``paper_tables.json``; nothing outside the package
is read at run time. That file is generated from the plain-text rows of the paper's
tables (one ``## [i] Table N: ...`` block per table, cells separated by ``' | '``)::

    python -m attackpsm.report.paper path/to/tables.txt      # rewrites paper_tables.json

Each record is one row of one table: where it applies (``table``, ``dataset``,
``resolution``, ``metric``, ``attack``, attack ``params``, ``agrees`` = ✓/✗) and its
``values`` (``samples``, ``flipped``, ``flipped_pct``, ``rmse_mean``, ...; the names of
:func:`attackpsm.summary.statistics.flip_stats`).
"""

from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

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


def _carry_metric(rows: list[list[str]], width: int) -> list[tuple[str, list[str]]]:
    """Rows whose metric cell is omitted (continuation rows) inherit the previous metric.

    A row with ``width`` cells starts a new metric; shorter rows continue it.
    """
    out, metric = [], None
    for r in rows:
        rest = r
        if len(r) == width:
            metric, rest = metric_key(r[0]), r[1:]
            if metric is None:
                raise ValueError(f"unknown metric in paper row: {r[0]!r}")
        out.append((metric, rest))
    return out


def _agree(cell: str) -> str:
    if cell not in ("✓", "✗"):
        raise ValueError(f"expected ✓ or ✗, got {cell!r}")
    return cell


def _rec(table, dataset, resolution, metric, attack, agrees, values, **params) -> dict[str, Any]:
    return {
        "table": table,
        "dataset": dataset,
        "resolution": resolution,
        "metric": metric,
        "attack": attack,
        "params": params,
        "agrees": agrees,
        "values": values,
    }


def _flips(cell: str) -> dict[str, float]:
    n, pct = _count_pct(cell)
    return {"flipped": n, "flipped_pct": pct}


def _pgd_cells(cells: list[str]) -> dict[str, float]:
    """``flipped | %px>0.001 | %px>0.01 | %px>0.03 | RMSE μ | RMSE σ``."""
    return {
        **_flips(cells[0]),
        "pct_px_gt_0.001": float(cells[1]),
        "pct_px_gt_0.01": float(cells[2]),
        "pct_px_gt_0.03": float(cells[3]),
        "rmse_mean": float(cells[4]),
        "rmse_std": float(cells[5]),
    }


def _fgsm_cells(cells: list[str]) -> dict[str, float]:
    """``flipped | mean ε | RMSE μ | RMSE σ``."""
    return {
        **_flips(cells[0]),
        "mean_eps": float(cells[1]),
        "rmse_mean": float(cells[2]),
        "rmse_std": float(cells[3]),
    }


# Table 2, after ``agrees | samples``: each attack's columns, how to read them, its parameters
_TABLE2_ATTACKS = (
    ("fgsm", slice(2, 6), _fgsm_cells, {"max_eps": 0.05}),
    ("pgd", slice(6, 12), _pgd_cells, {"alpha": 0.001}),
    ("onepixel", slice(12, 13), lambda cells: _flips(cells[0]), {}),
)


def parse_tables(text: str) -> list[dict[str, Any]]:
    """All records of Tables 1-12 (figure value panels are skipped)."""
    blocks = _blocks(text)
    recs: list[dict[str, Any]] = []
    bapps = dict(dataset="bapps", resolution=64)

    for r in _data_rows(blocks[1]):  # metric | 2AFC full | accuracy subset
        m = metric_key(r[0])
        recs.append(
            _rec(
                1,
                agrees=None,
                metric=m,
                attack="none",
                values={"accuracy": float(r[2]), "afc2_full": float(r[1])},
                **bapps,
            )
        )

    for m, c in _carry_metric(_data_rows(blocks[2]), 14):  # Table 2: FGSM | PGD | One-pixel
        agrees, samples = _agree(c[0]), int(c[1])
        for attack, cols, cells, params in _TABLE2_ATTACKS:
            recs.append(
                _rec(
                    2,
                    agrees=agrees,
                    metric=m,
                    attack=attack,
                    values={"samples": samples, **cells(c[cols])},
                    **params,
                    **bapps,
                )
            )

    for m, c in _carry_metric(_data_rows(blocks[3]), 3):  # Table 3: |s0 - s1|
        recs.append(
            _rec(
                3,
                agrees=_agree(c[0]),
                metric=m,
                attack="none",
                values={"sim_diff_mean": float(c[1])},
                **bapps,
            )
        )

    for m, c in _carry_metric(_data_rows(blocks[4]), 6):  # Table 4: PSNR FGSM | PGD
        agrees = _agree(c[0])
        recs.append(
            _rec(
                4,
                agrees=agrees,
                metric=m,
                attack="fgsm",
                values={"psnr_mean": float(c[1]), "psnr_std": float(c[2])},
                max_eps=0.05,
                **bapps,
            )
        )
        recs.append(
            _rec(
                4,
                agrees=agrees,
                metric=m,
                attack="pgd",
                values={"psnr_mean": float(c[3]), "psnr_std": float(c[4])},
                alpha=0.001,
                **bapps,
            )
        )

    header5 = next(r for r in blocks[5] if r[0].lower().startswith("pgd(10)"))
    sources5 = [TRANSFER_SOURCES[h.lower()] for h in header5]
    for r in _data_rows(blocks[5]):  # Table 5: transfer from LPIPS(Alex) stAdv samples
        m, (acc, acc_pct) = metric_key(r[0]), _count_pct(r[1])
        for source, cell in zip(sources5, r[2:], strict=True):
            recs.append(
                _rec(
                    5,
                    agrees="✓",
                    metric=m,
                    attack="transfer",
                    values={"accurate": acc, "accurate_pct": acc_pct, **_flips(cell)},
                    source=source,
                    **bapps,
                )
            )

    for table, dataset in ((6, "pieapp"), (7, "clic")):  # metric | res | agrees | samples | PGD
        metric = res = None
        for r in _data_rows(blocks[table]):
            cells = list(r)
            if metric_key(cells[0]) is not None:
                metric = metric_key(cells.pop(0))
            if re.fullmatch(r"\d+x\d+", cells[0]):
                res = int(cells.pop(0).split("x")[0])
            agrees, samples = _agree(cells[0]), int(cells[1])
            recs.append(
                _rec(
                    table,
                    dataset=dataset,
                    resolution=res,
                    metric=metric,
                    attack="pgd",
                    agrees=agrees,
                    values={"samples": samples, **_pgd_cells(cells[2:8])},
                    alpha=0.001,
                )
            )

    res = samples = None
    for r in _data_rows(blocks[8]):  # Table 8: stAdv on LPIPS(Alex), PieAPP, alpha of Eq. 4
        cells = list(r)
        if re.fullmatch(r"\d+x\d+", cells[0]):
            res, samples = int(cells[0].split("x")[0]), int(cells[1])
            cells = cells[2:]
        rmse_mean, rmse_std = _mu_sigma(cells[2])
        recs.append(
            _rec(
                8,
                dataset="pieapp",
                resolution=res,
                metric="lpips_alex",
                attack="stadv",
                agrees="✓",
                values={
                    "samples": samples,
                    **_flips(cells[1]),
                    "rmse_mean": rmse_mean,
                    "rmse_std": rmse_std,
                },
                alpha=float(cells[0]),
            )
        )

    for r in _data_rows(
        blocks[9]
    ):  # Table 9: transfer PGD(20) on PieAPP (256x256: 1184 accurate, Table 6)
        m, (acc, acc_pct) = metric_key(r[0]), _count_pct(r[1])
        recs.append(
            _rec(
                9,
                dataset="pieapp",
                resolution=256,
                metric=m,
                attack="transfer",
                agrees="✓",
                values={"accurate": acc, "accurate_pct": acc_pct, **_flips(r[2])},
                source="PGD(20)",
            )
        )

    for m, c in _carry_metric(_data_rows(blocks[10]), 13):  # Table 10: FGSM (ε < 0.03) | PGD
        agrees, samples = _agree(c[0]), int(c[1])
        recs.append(
            _rec(
                10,
                agrees=agrees,
                metric=m,
                attack="fgsm",
                values={"samples": samples, **_fgsm_cells(c[2:6])},
                max_eps=0.03,
                **bapps,
            )
        )
        recs.append(
            _rec(
                10,
                agrees=agrees,
                metric=m,
                attack="pgd",
                values={"samples": samples, **_pgd_cells(c[6:12])},
                alpha=0.001,
                **bapps,
            )
        )

    metric = alpha = None
    for r in _data_rows(blocks[11]):  # Table 11: PGD alpha
        cells = list(r)
        if metric_key(cells[0]) is not None:
            metric = metric_key(cells.pop(0))
        if cells[0] not in ("✓", "✗"):
            alpha = float(cells.pop(0))
        recs.append(
            _rec(
                11,
                agrees=_agree(cells[0]),
                metric=metric,
                attack="pgd",
                values={"samples": int(cells[1]), **_pgd_cells(cells[2:8])},
                alpha=alpha,
                **bapps,
            )
        )

    for r in _data_rows(blocks[12]):  # Table 12: reverse PGD on LPIPS(Alex)
        cells = r[1:]  # first cell: the metric, or its citation on the second row
        recs.append(
            _rec(
                12,
                agrees=_agree(cells[0]),
                metric="lpips_alex",
                attack="pgd_reverse",
                values={"samples": int(cells[1]), **_pgd_cells(cells[2:8])},
                **bapps,
            )
        )
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
    recs = parse_tables(Path(tables_txt).read_text(encoding="utf-8"))
    out = out or Path(__file__).with_name(DATA_FILE)
    payload = {
        "source": "Ghildyal & Liu, Attacking Perceptual Similarity Metrics, TMLR 2023: Tables 1-12",
        "generated_by": "python -m attackpsm.report.paper <tables.txt>",
        "records": recs,
    }
    out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m attackpsm.report.paper <tables.txt>")
    path = write_data_file(Path(sys.argv[1]))
    print(f"wrote {len(json.loads(path.read_text())['records'])} records to {path}")

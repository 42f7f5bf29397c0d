"""Hydra application: composes ``dataset``, ``metric``, ``attack``, ``resolution`` (+ ``logger``,
``paths``, ``hydra``, ``experiment``) and runs :func:`attackpsm.job.run.run` once per job.

Around it (:mod:`attackpsm.__main__`): ``--help`` (:func:`help_text`), the check of a command
line's keys before Hydra composes it (:func:`attackpsm.config.check_overrides`), one-line
messages for configuration errors (:class:`attackpsm.config.ConfigError`) and for Ctrl-C
(:func:`interrupted_line`).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from attackpsm.commands import COMMANDS
from attackpsm.config import CONFIG_DIR, ConfigError, option_names

log = logging.getLogger("attackpsm")

GROUPS = {
    "dataset": "2AFC triplets (reference, two distortions, judgment)",
    "metric": "the perceptual similarity metric attacked",
    "attack": "the attack and its budget (eps on the [-1, 1] scale)",
    "resolution": "image side and triplets per batch; any resolution=N works",
    "logger": "W&B (offline by default) or none",
    "paths": "results, logs, weights and cache directories",
    "experiment": "a paper table as a sweep (use with -m)",
}
LAUNCHERS = {
    "local": "every job as its own process on this machine (submitit; logs in <sweep>/.submitit/)",
    "slurm": "one SLURM job array, one task per job (site settings: conf/local/slurm.yaml)",
}
EXAMPLES = (
    "python -m attackpsm                                     # PGD on LPIPS(Alex), synthetic set, 64 px",
    "python -m attackpsm metric=dists attack=pgd attack.eps=0.01",
    "python -m attackpsm attack=stadv resolution=256 dataset.num_triplets=16",
    "python -m attackpsm -m metric=l2,lpips_alex attack=fgsm,pgd          # a sweep, one job each",
    "python -m attackpsm -m metric=ssim,lpips_alex hydra/launcher=local   # jobs as processes",
    "python -m attackpsm -m experiment=table2 hydra/launcher=slurm        # a paper table on SLURM",
)


def help_text() -> str:
    """``python -m attackpsm --help``: groups and their options, keys, examples, launchers."""
    config = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml")
    defaults = {}
    for entry in config.get("defaults", []):
        if isinstance(entry, DictConfig):
            defaults.update({str(k): v for k, v in entry.items()})
    lines = [
        "attackpsm: adversarial attacks on perceptual similarity metrics (Ghildyal & Liu, TMLR 2023)",
        "",
        "Usage: python -m attackpsm [group=option ...] [group.key=value ...] [-m]",
        "",
        "Config groups (pick one option each; `group.key=value` sets one of its keys):",
    ]
    for group, what in GROUPS.items():
        options = option_names(group)
        default = defaults.get(group)
        shown = ", ".join(f"{o}*" if str(o) == str(default) else o for o in options)
        lines.append(f"  {group}: {what}")
        lines.append(textwrap.fill(shown, 96, initial_indent=" " * 6, subsequent_indent=" " * 6))
    lines += [
        "  (* = default. The keys of an option: python -m attackpsm attack=pgd --cfg job)",
        "",
        "Top-level keys: "
        + ", ".join(
            f"{k}={v}"
            for k, v in config.items()
            if k != "defaults" and not isinstance(v, DictConfig)
        ),
        "",
        "Launchers of a sweep (-m), hydra/launcher=...:",
        "  basic*  every job in turn in this process",
    ]
    for name in option_names("hydra/launcher"):
        lines.append(f"  {name:<7} {LAUNCHERS.get(name, '')}")
    lines += ["", "Examples:"] + [f"  {e}" for e in EXAMPLES]
    lines += ["", "Commands, python -m attackpsm <command> --help for theirs:"]
    lines += [f"  {word:<12} {what}" for word, (_, what) in COMMANDS.items()]
    lines += [
        "",
        "Outputs: results under paths.results_dir (default ./results), one directory per run;",
        "Hydra logs under paths.log_dir (default ./logs); every path is printed absolute.",
        "Ctrl-C keeps every finished batch: the same command resumes.",
        "Python API: attackpsm.metric, attackpsm.attack, attackpsm.evaluate, attackpsm.run.",
        "Hydra's own flags: --hydra-help, --cfg job, --info.",
    ]
    return "\n".join(lines)


def resume_command(args: Sequence[str]) -> str:
    """The command line that runs ``args`` again (and so resumes it)."""
    return shlex.join(["python", "-m", "attackpsm", *args])


def interrupted_line(exc: KeyboardInterrupt, args: Sequence[str]) -> str:
    """The one line printed on Ctrl-C: what was saved and the command that resumes."""
    saved = getattr(exc, "saved", None)
    if saved is not None:
        what = f"{saved} of {exc.total} triplets saved in {exc.run_dir}"
        if any(a in ("-m", "--multirun") for a in args):
            what += " (and every finished job of the sweep)"
    else:
        what = "finished batches and jobs are saved"
    return f"Interrupted: {what}; run the same command to resume: {resume_command(args)}"


def error_line(exc: ConfigError) -> str:
    return f"Error: {exc}"


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from attackpsm.job.run import run

    os.environ.setdefault("TQDM_MININTERVAL", "1")
    try:
        out = run(cfg)
    except Exception as exc:
        message, status = user_error(exc)
        if message is None:
            raise
        if _in_sweep():  # Hydra names the job by its overrides, then prints this line alone
            from hydra.errors import CompactHydraException

            raise CompactHydraException(message) from None
        print(message, file=sys.stderr)
        sys.exit(status)
    return out.get("flip_rate")


def user_error(exc: BaseException) -> tuple[str | None, int]:
    """The one line and exit status for an error whose message is its fix; ``None``: other.

    Configuration errors exit 2; data or weights not on this machine exit 1 (their
    messages name the command that fetches them, or the expected layout), as does a shard
    another live writer holds (its message names the writer and what to do).
    """
    from attackpsm.data.files import DatasetLayoutError
    from attackpsm.data.transfer import CraftMissing
    from attackpsm.metrics.weights.safeload import WeightsUnavailable
    from attackpsm.storage.lease import LeaseHeld

    if isinstance(exc, ConfigError):
        return error_line(exc), 2
    cause = exc.__cause__ if type(exc).__name__ == "InstantiationException" else exc
    if isinstance(cause, WeightsUnavailable | DatasetLayoutError | CraftMissing | LeaseHeld):
        return f"Error: {cause}", 1
    return None, 1

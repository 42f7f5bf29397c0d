"""Transfer attack (Sec. 4.2, Table 5): the adversarial image a craft saved for a source metric.

``attack=saved`` never queries the target metric to make its image: it reads the PNG that
the craft (``python -m attackpsm craft``) saved for each triplet and scores it on the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from attackpsm.attacks.base import Attack, AttackResult, Threat, Triplets
from attackpsm.data.files import outside_root
from attackpsm.data.transfer import craft_location, load_png, read_manifest
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import rank_flipped


def _spec(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    spec = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    return {k: v for k, v in spec.items() if not k.startswith("_") and k != "name"}


class SavedAdversarial(Attack):
    """``attack=saved``: the adversarial image saved by a craft, for a target metric.

    Black-box with respect to the target: it never queries the target to make the image.
    A triplet gets its saved image only if the target picks the same prey as the source
    did (always the case on samples where both agree with humans); otherwise the prey is
    returned unchanged and ``transferred`` is False. Which triplet each prey belongs to is
    an input of :meth:`run` (``triplets``), not state kept between calls.

    Args:
        craft_dir: the crafted directory; or
        source: the ``dataset=transfer`` node (``${dataset}``), whose ``column`` craft is read.
        size: the crafting resolution (``${resolution.size}``), with ``source``.

    Example:
        >>> SavedAdversarial(craft_dir).run(l2, l2.prepare(ref), prey, s_other, triplets=t)
    """

    name = "saved"
    can_stall = False
    white_box = False
    columns = ("transferred",)
    needs_triplets = True
    threat = Threat(norm="none", access="transfer")
    family = "transfer"

    def __init__(
        self,
        craft_dir: str | None = None,
        source: Mapping[str, Any] | None = None,
        size: int | None = None,
    ):
        if craft_dir is None:
            if source is None:
                raise ValueError(
                    "attack=saved needs craft_dir or source (the dataset=transfer node)"
                )
            spec = _spec(source)
            if "source_metric" not in spec:
                raise ValueError(
                    "attack=saved reads the craft that dataset=transfer names: use it with "
                    f"dataset=transfer (or experiment=table5), got dataset keys {sorted(spec)}"
                )
            if spec.get("manifest"):
                craft_dir = spec["manifest"]
            else:
                craft_dir = str(
                    craft_location(
                        spec["store"],
                        spec["source"],
                        spec.get("source_overrides", []),
                        spec["source_metric"],
                        size,
                        spec["column"],
                        spec.get("seed", 0),
                    )
                )
        self.craft_dir = str(craft_dir)
        self._entries: dict[str, tuple[int, str]] | None = None

    def _manifest(self) -> dict[str, tuple[int, str]]:
        """Triplet id -> (source prey side, image folder); read once, it never changes."""
        if self._entries is None:
            frame = read_manifest(self.craft_dir)
            self._entries = {
                t: (int(p), d)
                for t, p, d in zip(frame["triplet_id"], frame["prey"], frame["dir"], strict=True)
                if not outside_root(str(d))  # never read outside the craft (a recorded skip)
            }
        return self._entries

    def run(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        triplets: Triplets | None = None,
    ) -> AttackResult:
        if triplets is None or len(triplets) != prey.shape[0]:
            got = "none" if triplets is None else len(triplets)
            raise ValueError(
                f"attack=saved needs the triplet id of each of the {prey.shape[0]} preys "
                f"(run(..., triplets=...)), got {got}"
            )
        entries = self._manifest()
        adv = prey.detach().clone()
        transferred = torch.zeros(prey.shape[0], dtype=torch.bool, device=prey.device)
        prey_is_p1 = triplets.prey_is_p1.detach().cpu()
        for i, tid in enumerate(triplets.triplet_id):
            entry = entries.get(tid)
            if entry is not None and entry[0] == int(prey_is_p1[i]):
                image = load_png(Path(self.craft_dir) / entry[1] / "adv.png")
                if image.shape != adv.shape[1:]:
                    raise ValueError(
                        f"saved image of {tid} is {tuple(image.shape)} but the triplet is "
                        f"{tuple(adv.shape[1:])}: evaluate at the crafting resolution"
                    )
                adv[i] = image.to(adv)
                transferred[i] = True
        with torch.no_grad():
            s_adv = metric.score(prepared_ref, adv)
        flipped = rank_flipped(s_adv, s_other, self.reverse) & transferred
        return AttackResult(adv, s_adv, flipped, {"transferred": transferred})

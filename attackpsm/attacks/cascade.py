"""AutoAttack-style cascade: run attacks in order on the triplets still unflipped.

A triplet counts as robust only if every attack in the list fails on it, so the flip rate
of the cascade is the worst case over its attacks (Croce & Hein, 2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attackpsm.attacks.base import Attack, AttackResult, Threat, Triplets, threat_of
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.twoafc import flip_margin


class Cascade(Attack):
    """Run ``attacks`` one after another, each on the triplets none before it flipped.

    Columns: ``attack_index`` (position of the attack that flipped the triplet, -1 for
    none), ``queries`` (metric calls of every attack that ran on it, where reported).
    An unflipped triplet keeps the image with the largest rank-flip margin.

    Args:
        attacks: attack objects (in a config, a list of nodes with ``_target_``).

    Example:
        >>> Cascade([APGD(), PGD(), APGD(max_iterations=100, restarts=1), Square()])
    """

    name = "autoattack"
    columns = ("iterations", "attack_index", "queries")
    threat = Threat(norm="linf", access="white-box")  # of an empty list; see resolve_threat

    @classmethod
    def resolve_threat(cls, node: Mapping[str, Any]) -> Threat:
        """The parts' threat model: the first part's norm, black-box only when every part is,
        the largest part budget (the cascade counts a flip by any of them)."""
        parts = [threat_of(a) for a in node.get("attacks") or ()]
        if not parts:
            return cls.threat
        budgets = [p.eps for p in parts if p.eps is not None]
        return Threat(
            norm=parts[0].norm,
            access="black-box" if all(p.access == "black-box" for p in parts) else "white-box",
            reverse=parts[0].reverse,
            randomised=any(p.randomised for p in parts),
            eps=max(budgets) if budgets else None,
        )

    def __init__(self, attacks: Sequence[Attack]):
        self.attacks = list(attacks)
        if not self.attacks:
            raise ValueError("attack parameter attacks must list at least one attack")
        if len({a.reverse for a in self.attacks}) > 1:
            raise ValueError("a cascade cannot mix forward and reverse attacks")
        self.white_box = any(a.white_box for a in self.attacks)
        self.reverse = self.attacks[0].reverse
        self.needs_triplets = any(a.needs_triplets for a in self.attacks)
        # a cascade stops on what its attacks stop on (attack.attacks.<i>.flip_on)
        self.flip_on = "saved" if any(a.flip_on == "saved" for a in self.attacks) else "float"

    def run(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        triplets: Triplets | None = None,
    ) -> AttackResult:
        n, device = prey.shape[0], prey.device
        adv = prey.clone()
        s_adv = torch.full((n,), float("nan"), device=device)
        flipped = torch.zeros(n, dtype=torch.bool, device=device)
        index = torch.full((n,), -1, dtype=torch.long, device=device)
        iterations = torch.zeros(n, dtype=torch.long, device=device)
        queries = torch.zeros(n, dtype=torch.long, device=device)
        stopped = torch.zeros(n, dtype=torch.bool, device=device)
        for i, attack in enumerate(self.attacks):
            todo = (~stopped).nonzero().flatten()
            if len(todo) == 0:
                break
            given = triplets is not None and attack.needs_triplets
            extra = {"triplets": triplets.take(todo)} if given else {}
            out = attack.run(metric, select(prepared_ref, todo), prey[todo], s_other[todo], **extra)
            s_new = out.s_adv.detach()
            if "queries" in out.columns:
                queries[todo] += out.columns["queries"]
            iterations[todo] += out.columns.get(
                "iterations", torch.zeros(len(todo), dtype=torch.long, device=device)
            )
            old = s_adv[todo]
            better = (
                out.success
                | torch.isnan(old)
                | (
                    flip_margin(s_other[todo], s_new, self.reverse)
                    > flip_margin(s_other[todo], old, self.reverse)
                )
            )
            idx = todo[better]
            adv[idx] = out.adv.detach()[better]
            s_adv[idx] = s_new[better]
            flipped[todo[better]] = out.flipped[better]
            stopped[todo[out.success]] = True
            index[todo[out.success]] = i
        return AttackResult(
            adv,
            s_adv,
            flipped,
            {"iterations": iterations, "attack_index": index, "queries": queries},
            stopped if self.flip_on == "saved" else None,
        )

"""``python -m attackpsm leaderboard RESULTS``: the robustness leaderboard of a results or sweep directory (:mod:`attackpsm.report.leaderboard`)."""

from __future__ import annotations

import argparse

from attackpsm.report.leaderboard import (
    L2_BUDGET,
    PAPER_BUDGET,
    leaderboard_from_cards,
    write_leaderboard,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results directory or Hydra sweep directory")
    parser.add_argument(
        "--from-cards",
        action="store_true",
        help="`results` is a folder of robustness cards: print the leaderboard they make",
    )
    parser.add_argument("--out", default=None, help="output folder (default <results>/leaderboard)")
    parser.add_argument("--budget", type=float, default=PAPER_BUDGET, help="ℓ∞ ε of the ranking")
    parser.add_argument("--budget-l2", type=float, default=L2_BUDGET, help="ℓ2 ε of the ranking")
    args = parser.parse_args(argv)
    if args.from_cards:
        print(leaderboard_from_cards(args.results))
        return
    md = write_leaderboard(args.results, args.out, args.budget, args.budget_l2)
    print(md.read_text())
    print(f"-> {md.absolute()}")


if __name__ == "__main__":
    main()

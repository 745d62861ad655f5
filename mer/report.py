"""``python -m mer.report``: re-pool a sweep's jobs, or score predictions made elsewhere.

    python -m mer.report SWEEP_DIR [--wandb] [--plot KEY [--metric uf1]]
    python -m mer.report score FILE [--classes a,b,c]
"""

from __future__ import annotations

from pathlib import Path

from mer.evaluation.sweep import aggregate_sweep


def main(argv: list[str] | None = None) -> int:
    """``python -m mer.report SWEEP_DIR [--wandb] [--plot KEY]``: re-aggregate a sweep and print its table.

    ``--plot frames`` also draws the pooled figure of the configurations that differ only in ``frames`` against it
    (``SWEEP_DIR/uf1_by_frames.png``: mean over seeds, the bootstrap interval of that mean, each seed).

    ``python -m mer.report score FILE [--classes a,b,c]`` scores predictions made elsewhere instead
    (:mod:`mer.evaluation.scoring`).
    """
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    # `score` is dispatched by hand rather than through argparse subparsers: with subparsers the
    # positional SWEEP_DIR of the original form would be parsed as a sub-command name.
    if argv and argv[0] == "score":
        from mer.evaluation.scoring import main as score_main

        return score_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m mer.report", description=main.__doc__,
        epilog="Sub-command: `python -m mer.report score FILE [--classes a,b,c]` scores a MEGC log or a "
               "predictions.csv (see `python -m mer.report score --help`). A sweep directory named `score` "
               "is given as ./score.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or a single run's output directory)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log a wandb summary run per configuration that was trained with logger=wandb")
    parser.add_argument("--plot", metavar="KEY",
                        help="draw the figure against this swept key (configurations differing in it alone)")
    parser.add_argument("--metric", choices=("uf1", "uar", "accuracy"), default="uf1", help="the figure --plot draws")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    rows = aggregate_sweep(args.sweep_dir, wandb_summaries=args.wandb)
    if not any(r["folds_found"] for r in rows):
        print(f"no fold predictions found under {args.sweep_dir}")
        return 1
    print((args.sweep_dir / "table.md").read_text(), end="")
    print(f"summaries in {args.sweep_dir / 'summaries'}")
    if args.plot:
        from mer.evaluation.plots import plot_against

        figure = args.sweep_dir / f"{args.metric}_by_{args.plot}.png"
        plotted = plot_against(rows, args.plot, figure, metric=args.metric,
                               title=f"{args.sweep_dir.name}: pooled {args.metric.upper() if args.metric != 'accuracy' else 'accuracy'} "
                                     f"against {args.plot}")
        print(f"{figure}: {plotted} configurations" if plotted else
              f"no configuration differs from the others in {args.plot} alone: nothing to plot")
    return 0 if all(r["complete"] for r in rows) else 2


if __name__ == "__main__":
    raise SystemExit(main())

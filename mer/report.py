"""Pooled LOSO summaries: ``summary.json``, ``summary.md``, ``predictions.csv``, ``confusion.png``.

Prediction tables have one row per test clip with the columns
``fold, dataset, subject, clip, label, prediction`` and one ``prob_<class>`` column per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mer.metrics import pooled_metrics, present_class_metrics
from mer.preprocess.cache import atomic_write_text

PREDICTION_COLUMNS = ["fold", "dataset", "subject", "clip", "label", "prediction"]


def summarise(predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None) -> dict[str, Any]:
    """Pool fold predictions into the headline metrics, per-fold table and per-source breakdown.

    Args:
        predictions: The pooled prediction table of every fold.
        class_names: The class set in index order.
        config: The resolved config to store beside the numbers.

    Returns:
        A JSON-ready dict: ``uf1``, ``uar``, ``accuracy`` (pooled), ``per_class``, ``confusion``,
        ``folds`` (per-fold table), ``fold_mean`` (means of the per-fold scores, labelled as such),
        ``per_dataset`` (when the table mixes source datasets), ``classes``, ``config``.
    """
    overall = pooled_metrics(predictions["label"], predictions["prediction"], class_names)
    folds = []
    for fold, group in predictions.groupby("fold", sort=True):
        row = present_class_metrics(group["label"], group["prediction"], len(class_names))
        folds.append({"fold": int(fold), "subject": str(group["subject"].iloc[0]), **row})
    summary: dict[str, Any] = {
        **{k: overall[k] for k in ("uf1", "uar", "accuracy")},
        "clips": int(len(predictions)),
        "num_folds": len(folds),
        "classes": list(class_names),
        "per_class": overall["per_class"],
        "confusion": overall["confusion"],
        "fold_mean": {
            key: float(np.mean([f[key] for f in folds])) for key in ("uf1", "uar", "accuracy")
        },
        "folds": folds,
    }
    if predictions["dataset"].nunique() > 1:
        per_dataset = {}
        for name, group in predictions.groupby("dataset", sort=True):
            present = [c for i, c in enumerate(class_names) if (group["label"] == i).any()]
            # Within one source some classes may be absent; score it on the classes it has.
            metrics = present_class_metrics(group["label"], group["prediction"], len(class_names))
            per_dataset[str(name)] = {**metrics, "classes_present": present}
        summary["per_dataset"] = per_dataset
    if config is not None:
        summary["config"] = config
    return summary


def summary_markdown(summary: dict[str, Any], title: str = "LOSO summary") -> str:
    """Human-readable version of :func:`summarise`'s output."""
    lines = [
        f"# {title}",
        "",
        f"Pooled over {summary['num_folds']} folds, {summary['clips']} clips (MEGC protocol).",
        "",
        "| metric | pooled | per-fold mean (classes present in the fold) |",
        "|---|---|---|",
    ]
    for key, name in (("uf1", "UF1"), ("uar", "UAR"), ("accuracy", "accuracy")):
        lines.append(f"| {name} | {summary[key]:.4f} | {summary['fold_mean'][key]:.4f} |")
    lines += ["", "| class | support | recall | F1 |", "|---|---|---|---|"]
    for name, row in summary["per_class"].items():
        lines.append(f"| {name} | {row['support']} | {row['recall']:.4f} | {row['f1']:.4f} |")
    if "per_dataset" in summary:
        lines += ["", "| source | clips | UF1 | UAR | accuracy |", "|---|---|---|---|---|"]
        for name, row in summary["per_dataset"].items():
            lines.append(f"| {name} | {row['clips']} | {row['uf1']:.4f} | {row['uar']:.4f} | {row['accuracy']:.4f} |")
    lines += ["", "| fold | test subject | clips | UF1 | UAR | accuracy |", "|---|---|---|---|---|---|"]
    for row in summary["folds"]:
        lines.append(
            f"| {row['fold']} | {row['subject']} | {row['clips']} | {row['uf1']:.4f} | {row['uar']:.4f} | {row['accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Save the confusion matrix (rows: true class, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_summary(
    out_dir: Path, predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None,
    title: str = "LOSO summary",
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md``, ``predictions.csv`` and ``confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predictions.sort_values(["fold", "subject", "clip"]).reset_index(drop=True)
    summary = summarise(predictions, class_names, config)
    atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary, title))
    plot_confusion(summary["confusion"], class_names, out_dir / "confusion.png", title)
    return summary


# --------------------------------------------------------------------------------------------
# Sweeps: pool the fold jobs of a Hydra multirun, one summary per configuration.

#: Config keys that do not define a configuration: which fold ran, where things were written.
NON_CONFIG_KEYS = ("fold", "paths", "resume")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in Path(sweep_dir).rglob(".hydra/config.yaml") if (p.parent.parent / "folds").is_dir())


def _configuration(job_dir: Path) -> tuple[str, str, dict]:
    """(group key, readable name, config without fold/paths) of one job directory."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), resolve=False)
    for key in NON_CONFIG_KEYS:
        config.pop(key, None)
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    name = ",".join(o for o in overrides if not o.split("=")[0].lstrip("+~") in NON_CONFIG_KEYS) or "default"
    return json.dumps(config, sort_keys=True, default=str), name, config


def aggregate_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Pool the fold predictions of every job under ``sweep_dir``, grouped by configuration.

    Writes ``<sweep_dir>/summaries/<configuration>/`` (the files of :func:`write_summary`) for each
    configuration and ``<sweep_dir>/table.md`` comparing them. A configuration with missing folds
    is flagged as incomplete in both.

    Returns:
        One row per configuration: ``name``, ``folds_found``, ``folds_expected``, ``complete``,
        ``uf1``, ``uar``, ``accuracy`` (pooled over the folds found), ``summary_dir``.
    """
    sweep_dir = Path(sweep_dir)
    groups: dict[str, dict[str, Any]] = {}
    for job_dir in _job_dirs(sweep_dir):
        key, name, config = _configuration(job_dir)
        group = groups.setdefault(key, {"name": name, "config": config, "fold_files": {}, "expected": set()})
        for fold_file in sorted((job_dir / "folds").glob("fold_*/predictions.csv")):
            info_file = fold_file.parent / "fold.json"
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            group["fold_files"][int(fold_file.parent.name.split("_")[1])] = fold_file
            if "num_folds" in info:
                group["expected"].add(int(info["num_folds"]))
    rows = []
    for group in groups.values():
        if not group["fold_files"]:
            continue
        predictions = pd.concat(
            [pd.read_csv(f, dtype={"subject": str, "clip": str, "dataset": str}) for _, f in sorted(group["fold_files"].items())],
            ignore_index=True,
        )
        classes = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
        expected = max(group["expected"]) if group["expected"] else len(group["fold_files"])
        found = len(group["fold_files"])
        safe = "".join(ch if ch.isalnum() or ch in "=,._-" else "_" for ch in group["name"])
        out = sweep_dir / "summaries" / safe
        title = f"{group['name']}: {found}/{expected} folds" + ("" if found == expected else " (INCOMPLETE)")
        try:
            summary = write_summary(out, predictions, classes, group["config"], title=title)
        except ValueError as error:  # e.g. a class absent from the folds found so far
            rows.append({"name": group["name"], "folds_found": found, "folds_expected": expected,
                         "complete": False, "uf1": None, "uar": None, "accuracy": None, "summary_dir": str(out),
                         "error": str(error)})
            continue
        rows.append({"name": group["name"], "folds_found": found, "folds_expected": expected,
                     "complete": found == expected, "uf1": summary["uf1"], "uar": summary["uar"],
                     "accuracy": summary["accuracy"], "summary_dir": str(out)})
    rows.sort(key=lambda r: r["name"])
    atomic_write_text(sweep_dir / "table.md", sweep_table(rows))
    atomic_write_text(sweep_dir / "table.json", json.dumps(rows, indent=2))
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown comparison of configurations (pooled metrics; incomplete ones flagged)."""
    lines = ["| configuration | folds | UF1 | UAR | accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        folds = f"{r['folds_found']}/{r['folds_expected']}" + ("" if r["complete"] else " INCOMPLETE")
        cells = ["n/a" if r[k] is None else f"{r[k]:.4f}" for k in ("uf1", "uar", "accuracy")]
        lines.append(f"| {r['name']} | {folds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m mer.report SWEEP_DIR``: re-aggregate a sweep and print its table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mer.report", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or a single run's output directory)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    rows = aggregate_sweep(args.sweep_dir)
    if not rows:
        print(f"no fold predictions found under {args.sweep_dir}")
        return 1
    print(sweep_table(rows), end="")
    print(f"summaries in {args.sweep_dir / 'summaries'}")
    return 0 if all(r["complete"] for r in rows) else 2


if __name__ == "__main__":
    raise SystemExit(main())

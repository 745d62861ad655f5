"""``preprocess.py check=true``: validate a dataset and report its problems, computing nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from mer.data.samples import read_sample_table
from mer.data.table import class_coverage
from mer.preprocess.pipeline import ensure_corpus


def check_dataset(cfg: DictConfig, out_dir: str | Path | None = None) -> bool:
    """Read and validate the sample table, write ``samples.csv`` and ``problems.csv``, print counts.

    Args:
        cfg: The preprocessing config.
        out_dir: Where to write the two tables; default ``paths.output_dir`` (the Hydra run directory).

    Besides the sheet's problems it reports, as warnings, the clip folders on disk that no sheet row names, and a
    class whose clips all come from one subject; as errors, an empty table and a class without a clip.

    Returns:
        True when no problem makes a clip unusable and every class has clips.
    """
    from mer.settings import check_settings

    check_settings(cfg, "preprocess")
    ensure_corpus(cfg)
    samples, problems = read_sample_table(cfg.dataset, on_error="skip", report_unlisted=True)
    errors, warnings = class_coverage(samples, list(cfg.dataset.classes), f"{cfg.dataset.name} ({cfg.dataset.root})")
    out = Path(out_dir if out_dir is not None else cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = samples[["dataset", "subject", "clip", "onset", "apex", "offset", "aus", "emotion", "label"]].copy()
    table["aus"] = table["aus"].map(lambda aus: "+".join(str(a) for a in aus))
    table = table.rename(columns={"label": "class"})
    table.to_csv(out / "samples.csv", index=False)
    problem_table = pd.DataFrame(
        [{"row": p.row, "clip": p.clip, "problem": p.message, "fatal": p.fatal} for p in problems],
        columns=["row", "clip", "problem", "fatal"],
    )
    problem_table.to_csv(out / "problems.csv", index=False)

    fatal = int(problem_table["fatal"].sum()) if len(problem_table) else 0
    print(f"{cfg.dataset.name}: {len(samples)} usable clips, {samples['subject'].nunique()} subjects, "
          f"{len(problems)} problems ({fatal} make a clip unusable)")
    classes = list(cfg.dataset.classes)
    print("clips per class:")
    print(samples["label"].value_counts().reindex(classes, fill_value=0).to_string())
    if samples["dataset"].nunique() > 1:  # a composite: its sources are reported apart too
        print("clips per source dataset and class:")
        print(pd.crosstab(samples["dataset"], samples["label"]).reindex(columns=classes, fill_value=0).to_string())
    print("clips per subject:")
    print(samples.groupby("subject").size().to_string())
    unlisted = [p for p in problems if p.kind == "unlisted"]
    for p in problems:
        if p.kind != "unlisted":
            print(f"{'ERROR' if p.fatal else 'warning'}: {p.message}")
    if unlisted:
        print(f"warning: {len(unlisted)} clip folder(s) on disk that the sheet does not list (not used):")
        for p in unlisted:
            print(f"  {p.clip}")
    for warning in warnings:
        print(f"warning: {warning}")
    for error in errors:
        print(f"ERROR: {error}")
    print(f"wrote {out / 'samples.csv'} and {out / 'problems.csv'}")
    return fatal == 0 and not errors

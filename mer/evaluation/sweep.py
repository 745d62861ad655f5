"""Sweeps: pool the fold jobs of a Hydra multirun, one summary per configuration and a ``table.md`` comparing them.

Jobs that differ only in run-only keys (``fold`` above all: :data:`mer.keys.RUN_ONLY_KEYS`) belong to one
configuration; jobs that differ only in ``seed`` are its replicates (:data:`mer.keys.REPLICATE_KEYS`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from mer.evaluation.summary import format_interval, seeds_interval, summarise, write_summary
from mer.files import atomic_write_text
from mer.keys import REPLICATE_KEYS, RUN_ONLY_KEYS, digest, is_replicate, is_run_only

log = logging.getLogger(__name__)


def configuration(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without its :data:`RUN_ONLY_KEYS` and :data:`REPLICATE_KEYS` (a deep copy)."""
    import copy

    config = copy.deepcopy(config)
    for dotted in (*RUN_ONLY_KEYS, *REPLICATE_KEYS):
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def configuration_key(config: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of :func:`configuration` of a resolved config: equal for the jobs of one configuration
    (whatever their fold and seed)."""
    return digest(configuration(config), digits=12)


def configuration_label(overrides: Sequence[str]) -> str:
    """The command-line overrides that name a configuration (run-only and seed ones dropped), joined by commas."""
    return ",".join(o for o in overrides if not _names_run(o)) or "default"


def _names_run(override: str) -> bool:
    """Whether an override says how a run went (run-only) or which replicate it is (seed), not what it trains."""
    key = override.split("=", 1)[0]
    return is_run_only(key) or is_replicate(key)


def wandb_group(experiment_name: str, label: str, key: str) -> str:
    """The wandb group of a configuration: readable, and unique through the configuration hash (<= 128 chars)."""
    suffix = f" ({key[:8]})"
    head = f"{experiment_name}/{label}"
    return head[: 128 - len(suffix)] + suffix


def load_job_config(job_dir: Path) -> dict[str, Any]:
    """The resolved config a Hydra job saved in ``job_dir/.hydra/config.yaml``.

    ``paths.output_dir`` (``${hydra:runtime.output_dir}`` at run time) resolves to ``job_dir``; should
    another interpolation not resolve outside its job, the config is returned unresolved.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.load(Path(job_dir) / ".hydra" / "config.yaml")
    if "paths" in cfg and "output_dir" in cfg.paths:
        cfg.paths.output_dir = str(job_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def _job_overrides(job_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))] if path.is_file() else []


# --------------------------------------------------------------------------------------------
# Sweeps: pool the fold jobs of a Hydra multirun, one summary per configuration.


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Every Hydra job directory under ``sweep_dir`` (those with ``.hydra/config.yaml``), sorted."""
    return sorted(p.parent.parent for p in Path(sweep_dir).rglob(".hydra/config.yaml"))


def training_cost(prediction_files: Sequence[Path]) -> dict[str, Any]:
    """What training the folds cost, read from the ``fold.json`` beside each fold's ``predictions.csv``.

    Returns:
        ``parameters``: the model's trainable parameters (None when no fold recorded it);
        ``train_seconds``: the folds' training seconds summed (fold-parallel folds record their share of the joint
        time, so the sum is the wall time of training either way; None when a fold did not record it).
    """
    parameters, seconds = None, []
    for prediction_file in prediction_files:
        info_file = Path(prediction_file).parent / "fold.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        parameters = parameters if parameters is not None else info.get("parameters")
        seconds.append(info.get("train_seconds"))
    total = None if not seconds or None in seconds else round(float(sum(seconds)), 1)
    return {"parameters": parameters, "train_seconds": total}


def _collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Group the job directories of a sweep by configuration and, within one, by seed, with the fold predictions
    each seed's jobs found."""
    groups: dict[str, dict[str, Any]] = {}
    for job_dir in _job_dirs(sweep_dir):
        config = load_job_config(job_dir)
        key = configuration_key(config)
        overrides = [o for o in _job_overrides(job_dir) if not _names_run(o)]
        group = groups.setdefault(key, {
            "key": key, "config": config, "overrides": overrides, "seeds": {}, "expected": set(), "job_dirs": [],
        })
        group["job_dirs"].append(job_dir)
        fold_files = group["seeds"].setdefault(config.get("seed"), {})
        for info_file in sorted(job_dir.glob("folds/fold_*/fold.json")):
            info = json.loads(info_file.read_text())
            group["expected"].add(int(info["num_folds"]))
        for fold_file in sorted(job_dir.glob("folds/fold_*/predictions.csv")):
            fold = int(fold_file.parent.name.split("_")[1])
            if fold in fold_files:
                log.warning("fold %d of %s (seed %s) found twice: %s and %s; the first is used",
                            fold, configuration_label(overrides), config.get("seed"), fold_files[fold], fold_file)
                continue
            fold_files[fold] = fold_file
    return sorted(groups.values(), key=lambda g: (configuration_label(g["overrides"]), g["key"]))


def _display_names(groups: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Short unique names (the overrides that vary across configurations) and the overrides all share."""
    if len(groups) < 2:
        return [configuration_label(g["overrides"]) for g in groups], []
    override_sets = [set(g["overrides"]) for g in groups]
    common = sorted(set.intersection(*override_sets))
    names = [",".join(o for o in g["overrides"] if o not in common) or "default" for g in groups]
    for i, name in enumerate(names):
        if names.count(name) > 1:  # configurations the overrides do not tell apart (e.g. edited config files)
            names[i] = f"{name}#{groups[i]['key'][:8]}"
    return names, common


def seed_statistics(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1) of one figure over seeds; the std is None for one seed."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "n": int(len(values))}


def seed_costs(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """``parameters``, ``train_seconds`` (mean over the seeds that recorded it) and ``per_source_uf1`` (mean over
    seeds per source; None for a single-source corpus) of a configuration's seeds."""
    scored = [entry for entry in per_seed if entry.get("uf1") is not None]
    parameters = next((e["parameters"] for e in scored if e.get("parameters") is not None), None)
    seconds = [e["train_seconds"] for e in scored if e.get("train_seconds") is not None]
    sources = sorted({source for e in scored for source in e.get("per_source_uf1") or {}})
    per_source = {source: float(np.mean([e["per_source_uf1"][source] for e in scored
                                         if source in (e.get("per_source_uf1") or {})])) for source in sources}
    return {"parameters": parameters, "train_seconds": round(float(np.mean(seconds)), 1) if seconds else None,
            "per_source_uf1": per_source or None}


def seed_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The over-seeds part of a configuration's ``summary.json``.

    Args:
        per_seed: One entry per seed: ``seed``, ``uf1``, ``uar``, ``accuracy`` (pooled over that seed's folds; None
            when they could not be pooled), ``ci`` and the seed's fold counts.

    Returns:
        ``{"num_seeds", "seeds": per_seed, "mean": {uf1, uar, accuracy}, "std": {...}}`` over the seeds that
        pooled; ``mean``/``std`` are None where none did, ``std`` None with one seed.
    """
    scored = [entry for entry in per_seed if entry.get("uf1") is not None]
    mean, std = {}, {}
    for name in ("uf1", "uar", "accuracy"):
        stats = seed_statistics([entry[name] for entry in scored]) if scored else {"mean": None, "std": None}
        mean[name], std[name] = stats["mean"], stats["std"]
    return {"num_seeds": len(scored), "seeds": per_seed, "mean": mean, "std": std}


def seeds_markdown(summary: dict[str, Any], title: str) -> str:
    """``summary.md`` of a configuration run with several seeds: one line per seed, then mean +- std."""
    lines = [f"# {title}", "",
             f"{summary['num_seeds']} seeds, each pooled over its own folds (MEGC protocol); the per-seed summaries "
             "are in the seed=<s>/ folders. Confidence intervals: 95 % bootstrap over subjects (on the mean ± std "
             "line: of the mean over seeds, every seed re-pooled on the same resampled subjects).", "",
             "| seed | folds | UF1 | UF1 95 % CI | UAR | UAR 95 % CI | accuracy | accuracy 95 % CI |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in summary["seeds"]:
        folds = f"{entry['folds_found']}/{entry['folds_expected'] or '?'}"
        folds += "" if entry["complete"] else " INCOMPLETE"
        cells = []
        for name in ("uf1", "uar", "accuracy"):
            value = entry.get(name)
            cells += ["n/a" if value is None else f"{value:.4f}", format_interval((entry.get("ci") or {}).get(name))]
        lines.append(f"| {entry['seed']} | {folds} | " + " | ".join(cells) + " |")
    interval = summary.get("ci") or {}
    lines.append("| mean ± std | | " + " | ".join(
        f"{format_spread(summary['mean'][n], summary['std'][n])} | {format_interval(interval.get(n))}"
        for n in ("uf1", "uar", "accuracy")) + " |")
    return "\n".join(lines) + "\n"


def format_spread(mean: float | None, std: float | None) -> str:
    """``mean ± std`` (just the mean when std is None, ``n/a`` when there is no mean)."""
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _read_predictions(files: dict[int, Path]) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(files[f], dtype={"subject": str, "clip": str, "dataset": str}) for f in sorted(files)],
        ignore_index=True,
    )


class _Coverage(NamedTuple):
    """Which folds a configuration's seeds found: ``expected`` folds (None when no fold started), its ``seeds`` in
    order and each seed's ``missing`` folds."""

    expected: int | None
    seeds: list[Any]
    missing: dict[Any, list[int]]


def _coverage(group: dict[str, Any]) -> _Coverage:
    """The :class:`_Coverage` of one configuration collected by :func:`_collect`."""
    expected = max(group["expected"]) if group["expected"] else None
    seeds = sorted(group["seeds"], key=lambda seed: (seed is None, str(seed) if seed is None else seed))
    missing = {seed: sorted(set(range(expected)) - set(group["seeds"][seed])) if expected else [] for seed in seeds}
    return _Coverage(expected, seeds, missing)


def _unscored_row(group: dict[str, Any], name: str, coverage: _Coverage) -> dict[str, Any]:
    """A configuration's row of :func:`aggregate_sweep` before any pooling: its folds found and missing, no figures.

    Args:
        group: The configuration, as :func:`_collect` groups it.
        name: Its display name.
        coverage: Its folds found per seed.

    Returns:
        The row, with every figure None and ``num_seeds`` 0.
    """
    seeds, missing_by_seed = coverage.seeds, coverage.missing
    found_counts = [len(group["seeds"][seed]) for seed in seeds]
    return {
        "name": name, "label": configuration_label(group["overrides"]), "key": group["key"], "seeds": seeds,
        "num_seeds": 0, "folds_found": min(found_counts) if found_counts else 0, "folds_expected": coverage.expected,
        "missing_folds": sorted(set().union(*missing_by_seed.values())) if seeds else [],
        "missing_by_seed": {str(seed): missing for seed, missing in missing_by_seed.items() if missing},
        "complete": coverage.expected is not None and not any(missing_by_seed.values()) and bool(seeds),
        "uf1": None, "uar": None, "accuracy": None, "uf1_std": None, "uar_std": None,
        "accuracy_std": None, "ci": None, "per_seed": [], "summary_dir": None,
        "parameters": None, "train_seconds": None, "per_source_uf1": None,
    }


def _pool_seed(name: str, seed: Any, files: dict[int, Path], coverage: _Coverage, config: dict[str, Any],
               target: Path, several: bool) -> tuple[dict[str, Any], tuple | None]:
    """Pool one seed's fold predictions of a configuration.

    Args:
        name: The configuration's display name.
        seed: The seed.
        files: The seed's ``predictions.csv`` per fold.
        coverage: The configuration's folds found per seed.
        config: The configuration (:func:`configuration` of a job's config).
        target: Where the seed's summary files go.
        several: Whether the configuration has several seeds (the title names the seed then).

    Returns:
        The seed's entry of ``per_seed`` (with ``error`` when its folds could not be pooled), and the
        ``(predictions, classes, title, target)`` of its summary (None when it has none to write).
    """
    expected, missing = coverage.expected, coverage.missing[seed]
    entry: dict[str, Any] = {"seed": seed, "folds_found": len(files), "folds_expected": expected,
                             "missing_folds": missing, "complete": expected is not None and not missing,
                             "uf1": None, "uar": None, "accuracy": None, "ci": None}
    if not files:
        return entry, None
    predictions = _read_predictions(files)
    classes = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
    title = f"{name}" + (f", seed {seed}" if several else "") + f": {len(files)}/{expected or '?'} folds"
    if not entry["complete"]:
        title += f" (INCOMPLETE: missing folds {missing})" if missing else " (INCOMPLETE)"
    try:
        summary = summarise(predictions, classes, config)  # to catch a missing class before writing
    except ValueError as error:  # e.g. a class absent from the folds found so far
        entry["error"] = str(error)
        return entry, None
    entry.update({k: summary[k] for k in ("uf1", "uar", "accuracy", "ci")}, **training_cost(list(files.values())))
    if "per_dataset" in summary:
        entry["per_source_uf1"] = {source: m["uf1"] for source, m in summary["per_dataset"].items()}
    return entry, (predictions, classes, title, target)


def _write_seed_summaries(group: dict[str, Any], row: dict[str, Any], coverage: _Coverage, config: dict[str, Any],
                          summaries: dict[Any, tuple], over_seeds: dict[str, Any], wandb_summaries: bool) -> None:
    """Write each pooled seed's summary files (and log them to wandb when asked and the jobs used it).

    Args:
        group: The configuration, as :func:`_collect` groups it.
        row: Its row of :func:`aggregate_sweep` (for the wandb group's label).
        coverage: Its folds found per seed.
        config: The configuration (:func:`configuration` of a job's config).
        summaries: ``(predictions, classes, title, target)`` per pooled seed, from :func:`_pool_seed`.
        over_seeds: The over-seeds record (:func:`seed_summary` and :func:`seed_costs`).
        wandb_summaries: Also log one wandb summary run per seed.
    """
    several = len(coverage.seeds) > 1
    for seed, (predictions, classes, title, target) in summaries.items():
        # One seed: its summary is the configuration's, with the per-seed record beside it.
        summary = write_summary(target, predictions, classes, config, title=title,
                                extra=None if several else over_seeds)
        if wandb_summaries and "wandb" in (group["config"].get("logger") or {}):
            node = group["config"]["logger"]["wandb"]
            log_summary_to_wandb(
                summary, target, node,
                group=node.get("group") or wandb_group(str(group["config"].get("experiment_name")), row["label"],
                                                       group["key"]),
                name=f"{group['config'].get('experiment_name')}-summary" + (f"-seed{seed}" if several else ""),
                config=config, extra={"folds_found": len(group["seeds"][seed]), "folds_expected": coverage.expected,
                                      "complete": not coverage.missing[seed], "seed": seed},
            )


def _write_over_seeds_summary(out: Path, name: str, over_seeds: dict[str, Any], summaries: dict[Any, tuple],
                              coverage: _Coverage, complete: bool, config: dict[str, Any]) -> None:
    """Write ``summary.json`` and ``summary.md`` over the seeds of a configuration run with several.

    Args:
        out: The configuration's summary folder.
        name: Its display name.
        over_seeds: The over-seeds record (:func:`seed_summary` and :func:`seed_costs`).
        summaries: ``(predictions, classes, title, target)`` per pooled seed, from :func:`_pool_seed`.
        coverage: Its folds found per seed.
        complete: Whether every seed found every fold.
        config: The configuration (:func:`configuration` of a job's config).
    """
    title = f"{name}: {over_seeds['num_seeds']} seeds" + ("" if complete else " (INCOMPLETE)")
    payload = {**over_seeds, "classes": summaries[next(iter(summaries))][1] if summaries else None,
               "num_folds": coverage.expected, "complete": complete, "config": config}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, default=str))
    atomic_write_text(out / "summary.md", seeds_markdown(payload, title))


def _summarise_configuration(sweep_dir: Path, group: dict[str, Any], row: dict[str, Any], coverage: _Coverage,
                             wandb_summaries: bool) -> None:
    """Pool each seed of one configuration, write its summaries and fill its row's figures in.

    Args:
        sweep_dir: The multirun directory (its summaries go under ``summaries/``).
        group: The configuration, as :func:`_collect` groups it (with at least one prediction file).
        row: Its row from :func:`_unscored_row`, updated in place.
        coverage: Its folds found per seed.
        wandb_summaries: Also log one wandb summary run per seed whose jobs used ``logger=wandb``.
    """
    name = row["name"]
    safe = "".join(ch if ch.isalnum() or ch in "=,._-#" else "_" for ch in name)[:200]
    out = sweep_dir / "summaries" / safe
    row["summary_dir"] = str(out)
    several = len(coverage.seeds) > 1
    config = configuration(group["config"])
    per_seed, summaries = [], {}
    for seed in coverage.seeds:
        entry, pooled = _pool_seed(name, seed, group["seeds"][seed], coverage, config,
                                   out / f"seed={seed}" if several else out, several)
        per_seed.append(entry)
        if pooled is not None:
            summaries[seed] = pooled
    over_seeds = seed_summary(per_seed) | seed_costs(per_seed)
    if several:
        # The interval of the seed mean: every seed re-pooled on the same resampled subjects (None unless every
        # seed pooled the same subjects).
        pooled = [summaries[seed][0] for seed in coverage.seeds if seed in summaries]
        over_seeds["ci"] = (seeds_interval(pooled, summaries[next(iter(summaries))][1])
                            if len(pooled) == len(coverage.seeds) else None)
    _write_seed_summaries(group, row, coverage, config, summaries, over_seeds, wandb_summaries)
    if several:
        _write_over_seeds_summary(out, name, over_seeds, summaries, coverage, row["complete"], config)
    errors = [f"seed {e['seed']}: {e['error']}" for e in per_seed if "error" in e]
    if errors:
        row["error"] = "; ".join(errors)
    row.update({"num_seeds": over_seeds["num_seeds"], "per_seed": per_seed,
                **{k: over_seeds[k] for k in ("parameters", "train_seconds", "per_source_uf1")},
                **{k: over_seeds["mean"][k] for k in ("uf1", "uar", "accuracy")},
                **{f"{k}_std": over_seeds["std"][k] for k in ("uf1", "uar", "accuracy")},
                "ci": per_seed[0]["ci"] if not several else over_seeds["ci"]})


def aggregate_sweep(sweep_dir: str | Path, wandb_summaries: bool = False) -> list[dict[str, Any]]:
    """Pool the fold predictions of every job under ``sweep_dir``, grouped by configuration and seed.

    Jobs belong to the same configuration when their resolved configs agree on every key but
    :data:`RUN_ONLY_KEYS` (``fold`` above all) and :data:`REPLICATE_KEYS` (``seed``). Each seed's folds are pooled
    on their own; a configuration is then summarised over its seeds (mean and sample std). Writes
    ``<sweep_dir>/summaries/<configuration>/``: with one seed the files of :func:`write_summary`; with several,
    those files per seed in ``seed=<s>/`` and a ``summary.json`` / ``summary.md`` over the seeds. Every
    configuration's ``summary.json`` holds ``seeds`` (per seed: pooled UF1, UAR, accuracy, their bootstrap
    intervals, folds found), ``num_seeds``, ``mean``, ``std`` and, with several seeds, ``ci``: the bootstrap
    interval of the mean. ``<sweep_dir>/table.md`` and ``table.json``
    compare the configurations. A configuration with a seed that has fewer prediction files than its corpus has
    subjects is flagged INCOMPLETE in both, with the missing folds listed.

    Args:
        sweep_dir: A multirun directory (or one run's output directory).
        wandb_summaries: Also log one wandb summary run per configuration (and seed) whose jobs used
            ``logger=wandb``.

    Returns:
        One row per configuration: ``name``, ``label`` (its overrides), ``key``, ``seeds`` (the seeds found),
        ``num_seeds`` (those that pooled), ``folds_found`` (fewest over the seeds), ``folds_expected`` (None when no
        fold started), ``missing_folds`` (over all seeds), ``missing_by_seed``, ``complete``, ``uf1``, ``uar``,
        ``accuracy`` (the mean over seeds of each seed's pooled figure: the pooled figure itself with one seed;
        None when nothing could be pooled), ``uf1_std``, ``uar_std``, ``accuracy_std`` (None with one seed),
        ``ci`` (the bootstrap intervals: of the pooled figures with one seed, of their mean over seeds with several;
        None when the seeds did not pool the same subjects), ``per_seed`` and ``summary_dir``.
    """
    sweep_dir = Path(sweep_dir)
    groups = _collect(sweep_dir)
    names, common = _display_names(groups)
    rows = []
    for group, name in zip(groups, names):
        coverage = _coverage(group)
        row = _unscored_row(group, name, coverage)
        rows.append(row)
        if any(group["seeds"].values()):
            _summarise_configuration(sweep_dir, group, row, coverage, wandb_summaries)
    atomic_write_text(sweep_dir / "table.md", sweep_table(rows, common))
    atomic_write_text(sweep_dir / "table.json", json.dumps(rows, indent=2, default=str))
    return rows


def sweep_table(rows: list[dict[str, Any]], common_overrides: Sequence[str] = ()) -> str:
    """Markdown comparison of configurations; incomplete ones flagged.

    With one seed a cell is the pooled figure and its 95 % bootstrap interval over subjects; with several it is
    the mean ± sample std over seeds of each seed's pooled figure, and the bootstrap interval of that mean (every
    seed re-pooled on the same resampled subjects; :func:`mer.evaluation.summary.seeds_interval`).
    """
    lines = []
    if common_overrides:
        lines += [f"Overrides shared by every configuration: `{','.join(common_overrides)}`", ""]
    sources = sorted({source for r in rows for source in r.get("per_source_uf1") or {}})
    lines += ["| configuration | folds | seeds | UF1 | UAR | accuracy | " + "".join(f"UF1 {s} | " for s in sources)
              + "parameters | train s |",
              "|---|---|---|---|---|---|" + "---|" * len(sources) + "---:|---:|"]
    for r in rows:
        folds = f"{r['folds_found']}/{r['folds_expected'] if r['folds_expected'] is not None else '?'}"
        if not r["complete"]:
            if len(r.get("seeds") or []) > 1 and r.get("missing_by_seed"):
                detail = "; ".join(f"seed {seed}: missing {', '.join(map(str, missing))}"
                                   for seed, missing in r["missing_by_seed"].items())
            else:
                detail = f"missing {', '.join(map(str, r['missing_folds']))}" if r["missing_folds"] else ""
            folds += " INCOMPLETE" + (f" ({detail})" if detail else "")
        cells = []
        for k in ("uf1", "uar", "accuracy"):
            if r[k] is None:
                cells.append("n/a")
            else:
                bounds = (r.get("ci") or {}).get(k)
                cells.append((format_spread(r[k], r[f"{k}_std"]) if r.get(f"{k}_std") is not None else f"{r[k]:.4f}")
                             + ("" if bounds is None else f" {format_interval(bounds)}"))
        per_source = r.get("per_source_uf1") or {}
        cells += [f"{per_source[source]:.4f}" if source in per_source else "n/a" for source in sources]
        cells.append(f"{r['parameters']:,}" if r.get("parameters") is not None else "n/a")
        cells.append(f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "n/a")
        seeds = str(len(r.get("seeds") or [])) if r.get("seeds") else "0"
        lines.append(f"| {r['name']} | {folds} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Weights & Biases: the summary run of a configuration.

#: WandbLogger arguments that are not ``wandb.init`` arguments (or are set here).
_LOGGER_ONLY_KEYS = ("_target_", "save_dir", "offline", "log_model", "prefix", "checkpoint_name", "experiment",
                     "version", "name", "job_type", "group", "anonymous")


def log_summary_to_wandb(
    summary: dict[str, Any], summary_dir: Path, logger_node: dict[str, Any], group: str, name: str,
    config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> None:
    """Log a configuration's pooled result as its own wandb run (``job_type="summary"``) in the folds' group.

    The run carries the pooled metrics in its summary, the confusion matrix image and the per-fold
    table. It writes under ``summary_dir/wandb`` (offline with ``WANDB_MODE=offline``; ``wandb sync`` later).

    Args:
        summary: The output of :func:`summarise` (as written to ``summary.json``).
        summary_dir: The directory holding ``confusion.png``; the run's files go under it.
        logger_node: The resolved ``logger.wandb`` config node (project, tags, entity, ...).
        group: The configuration's group (the fold runs' group).
        name: The run name.
        config: The resolved config to attach to the run.
        extra: More values for the run summary (e.g. folds found / expected).
    """
    import wandb

    init_args = {k: v for k, v in logger_node.items() if k not in _LOGGER_ONLY_KEYS and v is not None}
    if logger_node.get("offline"):
        init_args["mode"] = "offline"
    summary_dir = Path(summary_dir)
    run = wandb.init(dir=str(summary_dir), group=group, job_type="summary", name=name, config=config,
                     reinit="create_new", **init_args)
    try:
        pooled = {k: summary[k] for k in ("uf1", "uar", "accuracy", "clips", "num_folds")}
        pooled.update({f"fold_mean/{k}": v for k, v in summary["fold_mean"].items()})
        pooled.update({f"per_class/{c}/{k}": v for c, row in summary["per_class"].items() for k, v in row.items()})
        run.summary.update({**pooled, **(extra or {})})
        folds = pd.DataFrame(summary["folds"])
        run.log({
            "confusion": wandb.Image(str(summary_dir / "confusion.png")),
            "folds": wandb.Table(dataframe=folds),
        })
    finally:
        run.finish()

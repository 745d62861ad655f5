"""The settings of a run, checked in one place before any work starts (docs/reliability.md, "Settings").

``train.py`` and ``preprocess.py`` compose a config from many files and overrides; a value no run can use must stop
the run with one message that names the key, the value given and the values allowed, before a corpus is generated,
a clip preprocessed or a fold trained (the entry points print :class:`~mer.errors.ConfigError` without a
traceback). The rules are a table (:data:`COMMON_RULES`, :data:`TRAIN_RULES`, :data:`DATASET_RULES`) checked by
:func:`check_settings`; every problem found is reported at once.

Some values can only be judged against the data: the fold index and the validation subjects against the corpus's
subjects (:func:`check_folds`), the cache folder against the file system (:func:`check_writable`). Those are
checked as soon as what they depend on is known, still before any work that depends on them.

This module imports only the data layer's constants and the error classes, so that both the preprocessing and the
training side may call it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mer.data.samples import APEX_POLICIES, check_dataset_config
from mer.errors import ConfigError

#: ``optim.name`` values (:class:`mer.training.optim.OptimSettings`).
OPTIMIZERS = ("adam", "sgd")
#: ``preprocess.on_error`` values.
ON_ERROR = ("skip", "raise")
#: Validation metrics a checkpoint can be selected on, and whether larger is better.
SELECTION_MONITORS = {"val/uf1": "max", "val/uar": "max", "val/accuracy": "max", "val/loss": "min"}

_ABSENT = object()


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda value: _integer(value) and value >= minimum


def _number(minimum: float, strict: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return value > minimum if strict else value >= minimum

    return check


def _one_of(choices: Sequence[Any]) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


@dataclass(frozen=True)
class Rule:
    """One setting: its dotted key, the test its value must pass and the allowed values in words."""

    key: str
    valid: Callable[[Any], bool]
    allowed: str
    #: Where the key is absent from the config (an older or a hand-made config), it is not checked.
    optional: bool = True


#: Checked for both entry points.
COMMON_RULES = (
    Rule("frames", _at_least(1), "a whole number >= 1 (N, the paths per clip: N + 1 time stamps; 12 in the paper)"),
    Rule("preprocess.on_error", _one_of(ON_ERROR), f"one of {', '.join(ON_ERROR)}"),
    Rule("preprocess.workers", _at_least(0), "a whole number >= 0 (0 or 1: clips are processed in this process)"),
    Rule("preprocess.rebuild", _one_of((True, False)), "true or false"),
)
#: Checked for ``train.py`` (``mer.training.loso.run_loso``).
TRAIN_RULES = (
    Rule("data.batch_size", _at_least(1), "a whole number >= 1"),
    Rule("trainer.max_epochs", _at_least(1),
         "a whole number >= 1 (epochs per fold: with 0 every fold would test an untrained model)"),
    Rule("fold", _or_null(_at_least(0)), "null (every fold, one after another) or a fold index 0, 1, ..."),
    Rule("data.val_subjects", _at_least(0), "a whole number >= 0 (training subjects held out per fold)"),
    Rule("seed", _integer, "a whole number"),
    Rule("selection.monitor", _or_null(_one_of(tuple(SELECTION_MONITORS))),
         f"null or one of {', '.join(SELECTION_MONITORS)} (null: test the model after the last epoch)"),
    Rule("optim.name", lambda value: isinstance(value, str) and value.lower() in OPTIMIZERS,
         f"one of {', '.join(OPTIMIZERS)}"),
    Rule("optim.lr", _number(0, strict=True), "a number > 0 (the learning rate)"),
    Rule("optim.weight_decay", _number(0), "a number >= 0"),
    Rule("optim.momentum", _number(0), "a number >= 0 (SGD only: 0 with adam)"),
)
#: Checked in the ``dataset`` node and in each of a composite's ``dataset.sources``.
DATASET_RULES = (
    Rule("apex_policy", _one_of(APEX_POLICIES), f"one of {', '.join(APEX_POLICIES)}"),
    Rule("header_row", _or_null(_at_least(0)),
         "a whole number >= 0 (the 0-based row of the sheet's header: 0 = the first row)"),
)


def _value(node: Any, key: str) -> Any:
    """The value of ``key`` in ``node`` (resolved), ``_ABSENT`` when the key is not there."""
    if isinstance(node, DictConfig):
        try:
            return OmegaConf.select(node, key, default=_ABSENT, throw_on_missing=False)
        except OmegaConfBaseException:
            return _ABSENT  # an interpolation that cannot resolve here; what reads it reports it
    value: Any = node
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else repr(value)


def _violations(node: Any, rules: Sequence[Rule], prefix: str = "") -> list[str]:
    lines = []
    for rule in rules:
        value = _value(node, rule.key)
        if value is _ABSENT:
            if not rule.optional:
                lines.append(f"{prefix}{rule.key} is not set: expected {rule.allowed}")
            continue
        if not rule.valid(value):
            kind = f" ({type(value).__name__})" if isinstance(value, (float, str)) else ""
            lines.append(f"{prefix}{rule.key}={_shown(value)}{kind} is not allowed: expected {rule.allowed}")
    return lines


def _dataset_nodes(dataset: Any) -> list[tuple[str, Any]]:
    """(the dotted prefix a user types, node) for the dataset node and each composite source."""
    nodes = [("dataset.", dataset)]
    sources = _value(dataset, "sources")
    if isinstance(sources, Mapping):
        nodes += [(f"dataset.sources.{name}.", source) for name, source in sources.items()]
    return nodes


def settings_problems(cfg: DictConfig, command: str = "train") -> list[str]:
    """Every rule ``cfg`` breaks, one line each (empty when the settings are usable).

    Args:
        cfg: The composed config of ``train.py`` or ``preprocess.py``.
        command: ``"train"`` (all rules) or ``"preprocess"`` (the common and dataset rules).
    """
    rules = COMMON_RULES + (TRAIN_RULES if command == "train" else ())
    lines = _violations(cfg, rules)
    dataset = cfg.get("dataset") if isinstance(cfg, Mapping) else None
    if dataset is not None:
        for prefix, node in _dataset_nodes(dataset):
            lines += _violations(node, DATASET_RULES, prefix)
        try:
            check_dataset_config(dataset)  # no root; a class_set, layout or sheet_version naming no entry
        except ValueError as error:
            lines.append(str(error))
    if command == "train":
        lines += _combination_problems(cfg)
    return lines


def _combination_problems(cfg: DictConfig) -> list[str]:
    """Settings that are each allowed but not together."""
    lines = []
    monitor = _value(cfg, "selection.monitor")
    val_subjects = _value(cfg, "data.val_subjects")
    val_subjects = val_subjects if _integer(val_subjects) else 0
    if monitor not in (None, _ABSENT) and monitor in SELECTION_MONITORS and val_subjects <= 0:
        lines.append(f"selection.monitor={monitor} needs a validation split: set data.val_subjects to 1 or more "
                     "(training subjects held out per fold; the test subject is never used for selection)")
    if val_subjects > 0 and _value(cfg, "trainer.fold_parallel") is True:
        lines.append("data.val_subjects > 0 is not supported with trainer.fold_parallel=true "
                     "(fold-parallel training tests the last epoch); use the sequential or multirun path")
    return lines


def check_settings(cfg: DictConfig, command: str = "train") -> None:
    """Stop with every setting of ``cfg`` that no run can use (:func:`settings_problems`).

    Raises:
        ConfigError: naming each key, the value given and the values allowed.
    """
    lines = settings_problems(cfg, command)
    if len(lines) == 1:
        raise ConfigError(lines[0])
    if lines:
        raise ConfigError(f"{len(lines)} settings cannot be used:\n  " + "\n  ".join(lines))


def check_folds(cfg: DictConfig, subjects: Sequence[str], where: str) -> None:
    """``fold`` and ``data.val_subjects`` against the subjects of the corpus (``where`` says whose they are).

    Raises:
        ConfigError: ``fold`` is not one of 0..K-1, or ``data.val_subjects`` leaves a fold no training subject.
    """
    count = len(subjects)
    fold = _value(cfg, "fold")
    lines = []
    if _integer(fold) and not 0 <= fold < count:
        shown = f"{', '.join(subjects[:3])}{', ...' if count > 3 else ''}"
        lines.append(f"fold={fold} is out of range: {where} has {count} subjects ({shown}), so fold is 0..{count - 1} "
                     "(or null for every fold)")
    val_subjects = _value(cfg, "data.val_subjects")
    if _integer(val_subjects) and val_subjects > max(count - 2, 0):
        lines.append(f"data.val_subjects={val_subjects} is too large: {where} has {count} subjects, so a fold has "
                     f"{max(count - 1, 0)} training subjects and at most {max(count - 2, 0)} can be held out "
                     "(one must train)")
    if lines:
        raise ConfigError("\n".join(lines))


def check_writable(directory: str | os.PathLike, key: str, value: Any = None) -> None:
    """That files can be created in ``directory`` (or, where it does not exist yet, in its nearest existing parent).

    A file is created and removed there, so that a read-only mount, permissions and immutable folders are all
    found as they are (``os.access`` says yes to root on a read-only folder).

    Args:
        directory: The folder that will be written.
        key: The setting it comes from (``paths.cache_dir``), named in the message.
        value: That setting's value, when ``directory`` is a folder below it (default: ``directory``).

    Raises:
        ConfigError: naming ``key``, the folder and why it cannot be written.
    """
    directory = Path(directory).expanduser().absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    given = f"{key}={value if value is not None else directory}"
    if not existing.is_dir():
        raise ConfigError(f"{given}: {existing} is not a folder, so {directory} cannot be created; set {key} to a "
                          "folder that can be written")
    try:
        handle, probe = tempfile.mkstemp(prefix=".mer-write-test-", dir=existing)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason = f"read-only ({reason})"
        target = "" if existing == directory else f" (to create {directory})"
        raise ConfigError(f"{given}: cannot write into {existing}{target}: {reason}; set {key} to a writable folder, "
                          "or make it writable") from None
    os.close(handle)
    os.unlink(probe)


def config_dir() -> Path:
    """The config tree (the folder holding ``train.yaml``): the one Hydra composes every run from.

    An installed mer carries it as package data (``mer/conf/``, built from the top-level ``conf/``); a checkout
    (or an editable install) reads the top-level ``conf/`` itself. The installed copy is looked for first.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no mer config tree (train.yaml) in {package / 'conf'} or {package.parent / 'conf'}: "
                            "reinstall mer (pip install .) or run from a complete checkout")


def command_name(script: str) -> str:
    """How a user runs ``script`` (``train`` or ``preprocess``) here: ``mer preprocess`` from an installed mer,
    ``python preprocess.py`` from a checkout (what error messages print)."""
    installed = config_dir() == Path(__file__).resolve().parent / "conf"
    return f"mer {script}" if installed else f"python {script}.py"

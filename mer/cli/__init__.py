"""The ``mer`` command (the console entry point of an installed mer).

    mer train [OVERRIDES...]          LOSO training, or protocol=all_subjects for a deployable model (train.py)
    mer preprocess [OVERRIDES...]     build or check a cache (preprocess.py)
    mer report SWEEP_DIR | score FILE re-pool a sweep, score predictions made elsewhere (python -m mer.report)
    mer predict CHECKPOINT INPUT      run a saved model on a folder of frames or a video (mer/predict.py)
    mer synth --root DIR [...]        generate a synthetic corpus (python -m mer.synthetic)
    mer weights rife                  fetch published weights (python -m mer.weights)

``train`` and ``preprocess`` take Hydra overrides exactly as the scripts do (``-m`` multiruns, ``--help``,
``--cfg job``); their outputs, data and caches go under the current directory, as the scripts' do.
"""

from __future__ import annotations

import sys

#: Sub-command -> what it does (the usage line).
COMMANDS = {
    "train": "LOSO training, or protocol=all_subjects to train one deployable model (Hydra overrides)",
    "preprocess": "build or check the preprocessed cache of a dataset (Hydra overrides)",
    "report": "re-pool a sweep's folds (SWEEP_DIR), or score predictions made elsewhere (score FILE)",
    "predict": "run a saved model on a clip: a folder of frames or a video",
    "synth": "generate a synthetic corpus",
    "weights": "fetch published weights (rife)",
}


def usage() -> str:
    from mer.version import __version__

    width = max(map(len, COMMANDS))
    lines = [f"mer {__version__}: micro-expression recognition", "", "usage: mer COMMAND [ARGS...]", ""]
    lines += [f"  {name:{width}s}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "mer COMMAND --help describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``mer COMMAND ARGS...``; returns the exit status (Hydra commands exit themselves on errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mer.version import __version__

        print(f"mer {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    prog = f"mer {command}"
    if command == "train":
        from mer.cli.train import run

        run(rest, prog=prog)
        return 0
    if command == "preprocess":
        from mer.cli.preprocess import run

        run(rest, prog=prog)
        return 0
    if command == "report":
        from mer.report import main as report_main

        return int(report_main(rest) or 0)
    if command == "predict":
        from mer.predict import main as predict_main

        return int(predict_main(rest, prog=prog) or 0)
    if command == "synth":
        from mer.synthetic import main as synth_main

        synth_main(rest)
        return 0
    if command == "weights":
        from mer.weights import main as weights_main

        return int(weights_main(rest) or 0)
    print(f"mer: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


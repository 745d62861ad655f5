"""conf/experiment/ablations.yaml composes with every override its documented multirun lines sweep."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, expected", [
    (["frames=1"], {"frames": 1, "model": "layered_relations", "magnification": "lagrangian"}),
    (["magnification=eulerian"], {"frames": 12, "model": "layered_relations", "magnification": "eulerian"}),
    (["model=no_au_graph"], {"frames": 12, "model": "no_au_graph", "magnification": "lagrangian"}),
    (["+experiment/bench=linear_probe"], {"frames": 12, "model": "linear_probe", "magnification": "lagrangian"}),
])
def test_ablation_lines_compose(overrides, expected) -> None:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ablations", "seed=2", *overrides])
    assert cfg.dataset.name == "synthetic_hard" and cfg.experiment_name == "ablations" and cfg.seed == 2
    assert {"frames": cfg.frames, "model": cfg.model.name, "magnification": cfg.magnification.name} == expected
    for line in (REPO / "conf" / "experiment" / "ablations.yaml").read_text().splitlines():
        if "python train.py -m experiment=ablations" in line:
            assert "seed=0,1,2" in line and "hydra.sweep.dir=$D" in line

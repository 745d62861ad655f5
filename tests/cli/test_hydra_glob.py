"""``experiment=glob(bench/*)`` sweeps over the recipes of a nested config group."""
from pathlib import Path

from mer.cli.hydra_glob import expand_nested_globs

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_a_nested_glob_lists_the_sub_folder_options(tmp_path):
    (tmp_path / "experiment" / "bench").mkdir(parents=True)
    for name in ("b", "a", "notes.txt"):
        (tmp_path / "experiment" / "bench" / (name if "." in name else f"{name}.yaml")).write_text("")
    (tmp_path / "experiment" / "top.yaml").write_text("")
    assert expand_nested_globs(["-m", "experiment=glob(bench/*)", "fold=0"], tmp_path) == [
        "-m", "experiment=bench/a,bench/b", "fold=0"]
    assert expand_nested_globs(["experiment=glob('bench/a*')"], tmp_path) == ["experiment=bench/a"]
    # Left to Hydra: globs within the group itself, and patterns that match nothing.
    assert expand_nested_globs(["experiment=glob(*)", "model=glob(x/*)"], tmp_path) == [
        "experiment=glob(*)", "model=glob(x/*)"]


def test_the_shipped_bench_recipes_expand():
    [override] = expand_nested_globs(["experiment=glob(bench/*)"], CONF)
    recipes = override.split("=", 1)[1].split(",")
    assert {"bench/ststnet", "bench/off_apexnet", "bench/dual_inception", "bench/linear_probe",
            "bench/layered_relations"} <= set(recipes)

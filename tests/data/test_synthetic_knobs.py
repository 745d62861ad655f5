"""The synthetic corpus's difficulty knobs: each does what it says, measured from the corpus it writes; at their
defaults nothing changes."""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from mer.synthetic import (CASME2_CLASS_COUNTS, DIFFICULTY_KNOBS, EMOTION_AU_COMBOS, OTHERS_AU_COMBOS, GeneratorOptions,
                           draw_clips, generate_corpus, load_ground_truth, main, options_record, plan_emotions)

REPO = Path(__file__).resolve().parents[2]
TINY = {"subjects": 2, "clips_per_subject": 2, "frames_per_clip": (8, 10), "workers": 1}
EYELIDS = [37, 38, 40, 41, 43, 44, 46, 47]

#: Every knob on, for the corpus most tests below measure.
HARD = {"seed": 5, "subjects": 4, "clips_per_subject": 8, "frames_per_clip": (10, 12), "workers": 1,
        "apex_annotation_error_frames": 2.0, "style_strength": 1.0, "class_set": "with_others",
        "class_weights": "casme2", "blink_probability": 1.0, "blink_px": 2.5, "mouth_movement_probability": 0.5,
        "grayscale": True, "unilateral_probability": 0.0}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _sheet(root: Path) -> list[dict[str, str]]:
    with open(root / "coding.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def hard_corpus(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("hard") / "synthetic_hard", **HARD)


# ------------------------------------------------------------------------------------------------ determinism
def test_default_knobs_change_nothing(tmp_path: Path) -> None:
    defaults = GeneratorOptions()
    explicit = {name: getattr(defaults, name) for name in DIFFICULTY_KNOBS}
    plain = _hashes(generate_corpus(tmp_path / "plain", seed=2, **TINY))
    spelled_out = _hashes(generate_corpus(tmp_path / "explicit", seed=2, **TINY, **explicit))
    assert plain == spelled_out
    assert not set(DIFFICULTY_KNOBS) & set(options_record(defaults))  # the ground truth's options: as before
    assert options_record(GeneratorOptions(fps=100))["fps"] == 100


def test_same_seed_and_knobs_give_identical_bytes(hard_corpus: Path, tmp_path: Path) -> None:
    again = generate_corpus(tmp_path / "again", **(HARD | {"workers": 2}))
    assert _hashes(again) == _hashes(hard_corpus)


def test_a_knob_draws_from_its_own_stream() -> None:
    # Turning on the apex annotation error changes the sheet's apexes and nothing else of the plan.
    plain = draw_clips(1, 12, np.random.default_rng(0), GeneratorOptions())
    noisy = draw_clips(1, 12, np.random.default_rng(0), GeneratorOptions(apex_annotation_error_frames=3),
                       apex_error_rng=np.random.default_rng(1))
    assert [c.apex for c in plain] == [c.apex for c in noisy] and [c.aus for c in plain] == [c.aus for c in noisy]
    assert [c.sheet_apex for c in plain] == [c.apex for c in plain] != [c.sheet_apex for c in noisy]


def test_bad_knob_values_are_rejected() -> None:
    for bad in ({"apex_displacement_distribution": "normal"}, {"class_set": "five"}, {"blink_probability": 1.5},
                {"head_jump_px": -1.0}, {"fps": 20}, {"class_weights": {"negative": 1.0}},
                {"class_weights": "samm"}):
        with pytest.raises(ValueError):
            GeneratorOptions(**bad)


# --------------------------------------------------------------------------------------------- head motion
def _head_power(root: Path) -> tuple[float, float]:
    """Mean squared head translation at the apex per walk step (the walk starts at the onset), and its max."""
    power = []
    for record in load_ground_truth(root).values():
        steps = record["apex"] - record["onset"]
        shift = record["apex_head_displacement"]
        assert np.allclose(shift, shift[0], atol=2e-4)  # no rotation: a pure translation, the same for every point
        power.append((shift[0] ** 2).sum() / steps)
    return float(np.mean(power)), float(np.max(power))


def test_head_random_walk_has_the_step_it_is_given(tmp_path: Path) -> None:
    root = generate_corpus(tmp_path / "walk", seed=1, subjects=2, clips_per_subject=8, frames_per_clip=(30, 34),
                           head_step_px=0.2, head_step_deg=0.0, workers=1)
    mean_power, _ = _head_power(root)
    measured = np.sqrt(mean_power / 2)  # per axis
    print(f"measured head step {measured:.3f} px per frame (set 0.2)")
    assert 0.14 < measured < 0.26


def test_occasional_head_moves_have_the_rate_and_size_they_are_given(tmp_path: Path) -> None:
    root = generate_corpus(tmp_path / "jumps", seed=1, subjects=2, clips_per_subject=8, frames_per_clip=(30, 34),
                           head_step_px=0.0, head_step_deg=0.0, head_jump_probability=0.2, head_jump_px=1.0,
                           workers=1)
    mean_power, _ = _head_power(root)
    expected = 0.2 * (1.5 ** 3 - 0.5 ** 3) / 3  # rate x E[length^2], length ~ U(0.5, 1.5) px
    print(f"measured jump power {mean_power:.3f} px^2 per frame (expected {expected:.3f})")
    assert 0.5 * expected < mean_power < 1.6 * expected


# ------------------------------------------------------------------------------------------------- amplitude
def test_lognormal_amplitudes_stay_in_range_and_lean_small(tmp_path: Path) -> None:
    root = generate_corpus(tmp_path / "amp", seed=3, subjects=2, clips_per_subject=8, frames_per_clip=(8, 8),
                           apex_displacement_px=(0.3, 1.5), apex_displacement_distribution="lognormal", workers=1)
    amplitudes = np.array([np.linalg.norm(r["apex_displacement"], axis=1).max()
                           for r in load_ground_truth(root).values()])
    assert (amplitudes >= 0.3 - 1e-3).all() and (amplitudes <= 1.5 + 1e-3).all()
    assert np.median(amplitudes) < 0.9  # below the middle of the range: the geometric mean is 0.67


# ---------------------------------------------------------------------------------------- timing and the sheet
def test_sheet_apex_is_off_by_the_annotation_error(hard_corpus: Path) -> None:
    truth = load_ground_truth(hard_corpus)
    offsets = []
    for row in _sheet(hard_corpus):
        record = truth[f"sub{int(row['Subject']):02d}/{row['Filename']}"]
        assert int(row["ApexFrame"]) == record["annotated_apex"]
        assert int(row["OnsetFrame"]) < int(row["ApexFrame"]) < int(row["OffsetFrame"])
        offsets.append(int(row["ApexFrame"]) - record["apex"])
    offsets = np.array(offsets)
    print(f"sheet apex - true apex: mean {offsets.mean():+.2f}, std {offsets.std():.2f} frames (set 2)")
    assert (offsets != 0).mean() > 0.5 and 1.0 < offsets.std() < 3.0 and np.abs(offsets).max() <= 10


def test_frame_rate_scales_every_phase() -> None:
    fast = draw_clips(1, 20, np.random.default_rng(4), GeneratorOptions())
    slow = draw_clips(1, 20, np.random.default_rng(4), GeneratorOptions(fps=100))
    for a, b in zip(fast, slow):
        assert b.last_frame - b.first_frame + 1 == round((a.last_frame - a.first_frame + 1) / 2)
        assert b.onset < b.apex < b.offset
    rise = np.mean([(c.apex - c.onset) for c in slow]) / np.mean([(c.apex - c.onset) for c in fast])
    assert 0.4 < rise < 0.6


# ------------------------------------------------------------------------------------------------ classes
def test_class_counts_follow_the_casme2_proportions(hard_corpus: Path) -> None:
    counts = Counter(row["Estimated Emotion"] for row in _sheet(hard_corpus))
    # 32 clips in CASME II's 4-class proportions 68 : 32 : 28 : 126, largest remainders: 8.57, 4.03, 3.53, 15.87.
    assert counts == {"negative": 9, "positive": 4, "surprise": 3, "others": 16}
    assert len({row["Subject"] for row in _sheet(hard_corpus)}) == 4
    plan = plan_emotions(26, 10, CASME2_CLASS_COUNTS["with_others"], np.random.default_rng(0))
    assert Counter(e for s in plan for e in s) == {"negative": 69, "positive": 33, "surprise": 29, "others": 129}


def test_others_is_a_heterogeneous_mix(hard_corpus: Path) -> None:
    truth = load_ground_truth(hard_corpus)
    others = [r["aus"] for r in truth.values() if r["emotion"] == "others"]
    assert all(aus in OTHERS_AU_COMBOS for aus in others) and len(set(others)) >= 6
    emotional = {combo for combos in EMOTION_AU_COMBOS.values() for combo in combos}
    assert not emotional & set(OTHERS_AU_COMBOS)  # no other class's combination, only their AUs
    assert {au for combo in OTHERS_AU_COMBOS for au in combo} >= {1, 2, 4, 10, 12, 14, 15, 17, 25}


# ------------------------------------------------------------------------------------------------- style
def _directions(root: Path) -> dict[tuple[str, tuple[int, ...]], np.ndarray]:
    """(subject, AU set) -> unit-norm flattened apex displacement of the subject's clips of one single AU."""
    found = {}
    for record in load_ground_truth(root).values():
        if len(record["aus"]) == 1:
            vector = record["apex_displacement"].ravel()
            found.setdefault((record["subject"], record["aus"]), []).append(vector / np.linalg.norm(vector))
    for key, vectors in found.items():  # one subject, one AU: always the same direction
        assert min(float(v @ vectors[0]) for v in vectors) > 0.999, key
    return {key: vectors[0] for key, vectors in found.items()}


def _cross_subject_similarity(directions) -> list[float]:
    return [float(a @ b) for (s1, aus1), a in directions.items() for (s2, aus2), b in directions.items()
            if aus1 == aus2 and s1 < s2]


def test_each_subject_has_its_own_variant_of_an_au(tmp_path: Path) -> None:
    size = {"seed": 2, "subjects": 3, "clips_per_subject": 12, "frames_per_clip": (8, 8), "workers": 1,
            "unilateral_probability": 0.0}
    plain = _cross_subject_similarity(_directions(generate_corpus(tmp_path / "plain", **size)))
    styled = _cross_subject_similarity(_directions(generate_corpus(tmp_path / "styled", **size,
                                                                   style_strength=1.0)))
    print(f"cross-subject cosine of one AU's displacement: plain min {min(plain):.3f}, styled min {min(styled):.3f}")
    assert len(plain) >= 2 and len(styled) >= 2
    assert min(plain) > 0.98  # without style subjects differ by their face rotation only (a few degrees)
    assert min(styled) < 0.9 and np.mean(styled) < np.mean(plain) - 0.05


# ------------------------------------------------------------------------------------------- distractors
def test_blinks_and_mouth_movements_are_in_the_ground_truth(hard_corpus: Path) -> None:
    kinds = Counter()
    for key, record in load_ground_truth(hard_corpus).items():
        distractors = {d["kind"]: d for d in record["distractors"]}
        kinds.update(list(distractors))
        blink = distractors["blink"]  # blink_probability 1: every clip
        moved = np.linalg.norm(np.asarray(blink["displacement"]), axis=1)
        assert 0.8 * 2.5 - 1e-3 <= moved.max() <= 1.2 * 2.5 + 1e-3
        assert set(np.flatnonzero(moved)) == set(EYELIDS)
        assert blink["start"] < blink["peak"] < blink["end"]
        # Larger than the micro-expression, as blinks are in real recordings.
        assert moved.max() > np.linalg.norm(record["apex_displacement"], axis=1).max()
    assert kinds["blink"] == 32 and 8 <= sum(v for k, v in kinds.items() if k != "blink") <= 24


def test_a_blink_moves_the_eyelids_in_the_frames(tmp_path: Path) -> None:
    root = generate_corpus(tmp_path / "blink", seed=0, subjects=1, clips_per_subject=3, frames_per_clip=(40, 40),
                           blink_probability=1.0, blink_px=2.5, noise_sigma=0.0, head_step_px=0.0,
                           head_step_deg=0.0, illumination_drift=0.0, jpeg_quality=100, workers=1)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for key, record in load_ground_truth(root).items():
        blink = record["distractors"][0]
        peak = min(max(blink["peak"], record["first_frame"]), record["last_frame"])
        quiet = record["first_frame"] if blink["start"] > record["first_frame"] else record["last_frame"]
        gray = [cv2.imread(str(root / key / f"img{f}.jpg"), cv2.IMREAD_GRAYSCALE) for f in (quiet, peak)]
        flow = dis.calc(gray[0], gray[1], None)
        points = np.rint(record["onset_landmarks"]).astype(int)
        at = np.linalg.norm(flow[points[:, 1], points[:, 0]], axis=1)
        lids = at[[38, 44]].mean()  # upper lids, whose move is the largest
        print(f"{key}: flow at upper lids {lids:.2f} px, at the jaw {at[:17].mean():.2f} px")
        assert lids > 0.8 and lids > 4 * at[:17].mean()


# ---------------------------------------------------------------------------------------------- grayscale
def test_grayscale_frames_have_equal_channels(hard_corpus: Path) -> None:
    for key, record in list(load_ground_truth(hard_corpus).items())[:3]:
        path = hard_corpus / key / f"img{record['apex']}.jpg"
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2  # one channel on disk, as SAMM
        colour = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert (colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all()


# ------------------------------------------------------------------------------------------- presets, CLI
def test_hard_preset_composes_and_its_generator_is_valid() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic_hard"])
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert node["name"] == "synthetic_hard" and node["root"].endswith("synthetic_hard")
    assert node["classes"] == ["negative", "positive", "surprise", "others"] and node["class_map"]["others"] == "others"
    generator = dict(cfg.dataset.generator)
    assert (generator.pop("seed"), generator.pop("subjects"), generator.pop("clips_per_subject")) == (0, 26, 10)
    options = GeneratorOptions(**generator)
    assert options.class_weights == {k: float(v) for k, v in sorted(CASME2_CLASS_COUNTS["with_others"].items())}
    assert options.style_strength > 0 and options.head_step_px == 0.1 and options.apex_displacement_px == (0.3, 1.5)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        quick = compose("train", overrides=[])
    assert quick.dataset.name == "synthetic" and quick.dataset.generator.subjects == 10


def test_command_line_knobs_and_config(tmp_path: Path) -> None:
    main(["--root", str(tmp_path / "cli"), "--seed", "1", "--subjects", "1", "--clips-per-subject", "4",
          "--workers", "1", "--fps", "100", "--grayscale", "true", "--class-set", "with_others",
          "--class-weights", "negative=1,positive=1,surprise=1,others=1", "--apex-annotation-error-frames", "2"])
    truth = load_ground_truth(tmp_path / "cli")
    assert all(15 <= r["last_frame"] - r["first_frame"] + 1 <= 30 and "annotated_apex" in r for r in truth.values())
    assert Counter(r["emotion"] for r in truth.values()) == {"negative": 1, "positive": 1, "surprise": 1, "others": 1}
    config = tmp_path / "small.yaml"
    config.write_text("generator:\n  seed: 3\n  subjects: 1\n  clips_per_subject: 2\n  frames_per_clip: [8, 9]\n"
                      "  style_strength: 0.5\n")
    main(["--root", str(tmp_path / "from_config"), "--from-config", str(config), "--workers", "1"])
    direct = generate_corpus(tmp_path / "direct", seed=3, subjects=1, clips_per_subject=2, frames_per_clip=(8, 9),
                             style_strength=0.5, workers=1)
    assert _hashes(tmp_path / "from_config") == _hashes(direct)

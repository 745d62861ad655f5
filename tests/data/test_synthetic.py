"""The synthetic corpus: layout, sheet, determinism, ground truth, and motion where the ground truth says."""
from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import dlib
import numpy as np
import openpyxl
import pytest

from mer.data.aus import parse_action_units
from mer.synthetic import (
    AU_TEMPLATES,
    EMOTION_AU_COMBOS,
    MIRROR_68,
    SHEET_COLUMNS,
    GeneratorOptions,
    au_displacements,
    dlib_predictor_path,
    ensure_corpus,
    generate_corpus,
    intensity_profile,
    landmark_sides,
    load_base_face,
    load_ground_truth,
    main,
    make_subject,
    mirror_face,
    tps_fit,
    undo_expression,
)
from mer.data.aus import AUS

SMALL = {"subjects": 2, "clips_per_subject": 2, "frames_per_clip": (12, 14), "workers": 1}


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _sheet_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "coding.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------------- layout
def test_layout_is_casme2(tiny_corpus: Path) -> None:
    assert sorted(p.name for p in tiny_corpus.iterdir() if p.is_dir()) == ["sub01", "sub02", "sub03"]
    truth = load_ground_truth(tiny_corpus)
    assert len(truth) == 9
    first_frames = []
    for key, record in truth.items():
        names = sorted(p.name for p in (tiny_corpus / key).iterdir())
        assert all(re.fullmatch(r"img\d+\.jpg", name) for name in names), names
        numbers = sorted(int(name[3:-4]) for name in names)
        assert numbers == list(range(record["first_frame"], record["last_frame"] + 1))
        assert 24 <= len(numbers) <= 30
        assert record["first_frame"] <= record["onset"] < record["apex"] < record["offset"] <= record["last_frame"]
        assert re.fullmatch(r"sub\d\d/EP\d\d_\d\d", key)
        first_frames.append(numbers[0])
    assert min(first_frames) > 1  # CASME II-like: numbering does not start at 1
    key, record = next(iter(truth.items()))
    frame = cv2.imread(str(tiny_corpus / key / f"img{record['first_frame']}.jpg"))
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8


def test_sheet_columns_are_casme2_in_both_formats(tiny_corpus: Path) -> None:
    with open(tiny_corpus / "coding.csv", newline="") as handle:
        csv_rows = list(csv.reader(handle))
    workbook = openpyxl.load_workbook(tiny_corpus / "coding.xlsx")
    xlsx_rows = [list(row) for row in workbook.active.iter_rows(values_only=True)]
    assert tuple(csv_rows[0]) == SHEET_COLUMNS == tuple(xlsx_rows[0])
    assert len(csv_rows) == len(xlsx_rows) == 1 + 9
    assert all(isinstance(row[0], int) for row in xlsx_rows[1:])  # Subject is an integer, as in CASME II
    assert [[str(cell) for cell in row] for row in xlsx_rows[1:]] == csv_rows[1:]


def test_sheet_agrees_with_ground_truth_and_labels_follow_aus(tiny_corpus: Path) -> None:
    truth = load_ground_truth(tiny_corpus)
    per_subject = Counter()
    for row in _sheet_rows(tiny_corpus):
        record = truth[f"sub{int(row['Subject']):02d}/{row['Filename']}"]
        assert (int(row["OnsetFrame"]), int(row["ApexFrame"]), int(row["OffsetFrame"])) == (
            record["onset"], record["apex"], record["offset"])
        aus, unreadable = parse_action_units(row["Action Units"])
        assert aus == record["aus"] and not unreadable
        assert row["Estimated Emotion"] == record["emotion"]
        assert record["aus"] in EMOTION_AU_COMBOS[record["emotion"]]
        per_subject[row["Subject"], record["emotion"]] += 1
    # 3 clips per subject and 3 classes: one clip of each class per subject.
    assert set(per_subject.values()) == {1} and len(per_subject) == 9


def test_classes_share_aus_and_every_au_is_used() -> None:
    used = {emotion: {au for combo in combos for au in combo} for emotion, combos in EMOTION_AU_COMBOS.items()}
    assert set().union(*used.values()) == set(AUS) == set(AU_TEMPLATES)
    shared = [a & b for a, b in [(used["negative"], used["positive"]), (used["negative"], used["surprise"]),
                                 (used["positive"], used["surprise"])]]
    assert all(shared)
    assert all(len(combos) >= 3 for combos in EMOTION_AU_COMBOS.values())


def test_default_corpus_is_balanced() -> None:
    from mer.synthetic import draw_clips

    options = GeneratorOptions()
    counts = Counter(clip.emotion for subject in range(1, 11)
                     for clip in draw_clips(subject, 8, np.random.default_rng(subject), options))
    assert sum(counts.values()) == 80 and max(counts.values()) - min(counts.values()) <= 1


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = _file_hashes(generate_corpus(tmp_path / "a", seed=3, **SMALL))
    in_parallel = _file_hashes(generate_corpus(tmp_path / "b", seed=3, **(SMALL | {"workers": 2})))
    other_seed = _file_hashes(generate_corpus(tmp_path / "c", seed=4, **SMALL))
    assert first == in_parallel
    assert len(first) > 20 and "coding.xlsx" in first and "ground_truth.json" in first
    assert first["coding.xlsx"] != other_seed["coding.xlsx"]
    assert first["ground_truth.json"] != other_seed["ground_truth.json"]
    assert not set(first.items()) & {item for item in other_seed.items() if item[0].endswith(".jpg")}


def test_xlsx_timestamps_are_pinned(tiny_corpus: Path) -> None:
    # Two runs within the same second would agree anyway; check the pinned stamps themselves.
    with zipfile.ZipFile(tiny_corpus / "coding.xlsx") as archive:
        assert {entry.date_time for entry in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        core = archive.read("docProps/core.xml").decode()
    assert core.count("2013-01-01T00:00:00Z") == 2


def test_refuses_to_overwrite_without_being_asked(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_corpus(root, **SMALL)
    assert (root / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no staging folder left behind


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        generate_corpus(tmp_path / "x", not_an_option=1)
    with pytest.raises(ValueError, match="apex_displacement_px"):
        generate_corpus(tmp_path / "x", apex_displacement_px=(2.0, 1.0))


def test_ensure_corpus_generates_only_when_missing(tmp_path: Path, synthetic_dataset_yaml) -> None:
    cfg = synthetic_dataset_yaml.copy()
    cfg.root = str(tmp_path / "generated")
    cfg.generator = {"seed": 1, "subjects": 1, "clips_per_subject": 2, "frames_per_clip": [12, 12], "workers": 1}
    root = ensure_corpus(cfg)
    assert (root / "coding.xlsx").is_file() and len(_sheet_rows(root)) == 2
    stamp = (root / "coding.xlsx").stat().st_mtime_ns
    cfg.generator.subjects = 2
    assert ensure_corpus(cfg) == root and (root / "coding.xlsx").stat().st_mtime_ns == stamp
    cfg.root, cfg.generate_if_missing = str(tmp_path / "absent"), False
    assert not ensure_corpus(cfg).exists()
    foreign = tmp_path / "foreign"  # a folder without the sheet that is not ours: left alone
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    cfg.root, cfg.generate_if_missing = str(foreign), True
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_corpus(cfg)
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]


def test_command_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mer.synthetic", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], check=True)
    assert "--clips-per-subject" in result.stdout and "--seed" in result.stdout
    main(["--root", str(tmp_path / "cli"), "--seed", "5", "--subjects", "1", "--clips-per-subject", "2",
          "--workers", "1"])
    rows = _sheet_rows(tmp_path / "cli")
    assert [row["Subject"] for row in rows] == ["1", "1"]
    truth = load_ground_truth(tmp_path / "cli")
    assert all(30 <= record["last_frame"] - record["first_frame"] + 1 <= 60 for record in truth.values())


# ------------------------------------------------------------------------------------------- geometry and AUs
def test_mirror_table_matches_dlib_on_the_mirrored_photo() -> None:
    assert np.array_equal(MIRROR_68[MIRROR_68], np.arange(68))
    base = load_base_face()
    mirrored = mirror_face(base)
    image = (mirrored.image * 255).astype(np.uint8)
    faces = dlib.get_frontal_face_detector()(image, 0)
    assert len(faces) == 1
    shape = dlib.shape_predictor(str(dlib_predictor_path()))(image, faces[0])
    found = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
    assert np.linalg.norm(found - mirrored.landmarks, axis=1).mean() < 2.0


def test_each_au_moves_its_landmarks_in_its_direction() -> None:
    side = landmark_sides(load_base_face().landmarks)
    assert side[17] == side[48] == -1 and side[26] == side[54] == 1 and side[8] == side[51] == 0

    def move(au: int, laterality: dict | None = None) -> np.ndarray:
        return au_displacements((au,), np.ones(1), laterality or {}, side, rotation=0.0)

    up, down = (lambda d: d[..., 1] < 0), (lambda d: d[..., 1] > 0)
    assert up(move(1)[[20, 21, 22, 23]]).all() and np.abs(move(1)[[17, 26]]).max() == 0
    assert up(move(2)[[17, 18, 25, 26]]).all()
    brows_down = move(4)
    assert down(brows_down[[19, 20, 21, 22, 23, 24]]).all()
    assert brows_down[21, 0] > 0 > brows_down[22, 0]  # towards the midline
    assert up(move(10)[[50, 51, 52]]).all()
    corners = move(12)
    assert up(corners[[48, 54]]).all() and corners[48, 0] < 0 < corners[54, 0]  # up and outwards
    assert move(14)[48, 0] > 0 > move(14)[54, 0]  # inwards
    assert down(move(15)[[48, 54]]).all()
    assert up(move(17)[[56, 57, 58]]).all()
    lips_apart = move(25)
    assert down(lips_apart[[65, 66, 67]]).all() and up(lips_apart[[61, 62, 63]]).all()
    for au in AUS:  # nothing moves the face outline, the nose or the eyes
        assert np.abs(move(au)[list(range(0, 17)) + list(range(27, 48))]).max() == 0
    right_only = move(12, {12: "R"})  # the subject's right is the image-left half
    assert np.abs(right_only[54]).max() == 0 and up(right_only[48])


def test_undo_expression_inverts_the_warp_at_the_landmarks() -> None:
    options = GeneratorOptions()
    subject = make_subject(1, np.random.default_rng(0), load_base_face(), options)
    for aus in [(1, 2, 25), (4, 15, 17), (10, 12, 25), (4, 14)]:
        relative = au_displacements(aus, np.ones(len(aus)), {}, subject.side, subject.rotation)
        displacement = 2.0 * relative / np.linalg.norm(relative, axis=1).max()
        values = np.concatenate([displacement, np.zeros((len(subject.centers) - 68, 2))])
        forward = (subject.design @ tps_fit(subject.centers, values)).astype(np.float32).reshape(224, 224, 2)
        for strength in (0.5, 1.0):
            moved = (subject.landmarks + strength * displacement).astype(np.float32)[None]
            neutral = undo_expression(moved, forward, strength)[0]
            assert np.abs(neutral - subject.landmarks).max() < 0.05, (aus, strength)


def test_intensity_profile_rises_to_apex_and_falls_to_offset() -> None:
    frames = np.arange(40, 81)
    profile = intensity_profile(frames, onset=45, apex=55, offset=75)
    assert profile[frames <= 45].max() == 0 and profile[frames >= 75].max() == 0
    assert profile[frames == 55][0] == 1 and profile.max() == 1
    rising, falling = profile[(frames >= 45) & (frames <= 55)], profile[(frames >= 55) & (frames <= 75)]
    assert (np.diff(rising) > 0).all() and (np.diff(falling) < 0).all()


def test_ground_truth_displacements(tiny_corpus: Path) -> None:
    options = GeneratorOptions()
    for key, record in load_ground_truth(tiny_corpus).items():
        displacement = np.linalg.norm(record["apex_displacement"], axis=1)
        assert options.apex_displacement_px[0] - 1e-3 <= displacement.max() <= options.apex_displacement_px[1] + 1e-3
        moved_by_aus = {point for au in record["aus"] for points, _ in AU_TEMPLATES[au] for point in points}
        still = sorted(set(range(68)) - moved_by_aus)
        assert displacement[still].max() == 0, key
        head = np.linalg.norm(record["apex_head_displacement"], axis=1)
        assert head.max() < 0.5 * displacement.max(), key  # head motion clearly smaller than the expression
        landmarks = record["onset_landmarks"]
        assert landmarks.shape == (68, 2) and (landmarks > 10).all() and (landmarks < 214).all()


# ----------------------------------------------------------------------------------------- rendered frames
def _gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _window_means(magnitude: np.ndarray, points: np.ndarray, half: int = 3) -> np.ndarray:
    """Mean of ``magnitude`` in a (2 half + 1)^2 window around each (x, y) point -> (len(points),)."""
    centers = np.rint(points).astype(int)
    offsets = np.arange(-half, half + 1)
    rows = centers[:, 1, None, None] + offsets[None, :, None]
    cols = centers[:, 0, None, None] + offsets[None, None, :]
    return magnitude[rows, cols].mean(axis=(1, 2))


def test_motion_is_where_the_ground_truth_says(tiny_corpus: Path) -> None:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    moving_means, still_means = [], []
    for key, record in load_ground_truth(tiny_corpus).items():
        onset = _gray(tiny_corpus / key / f"img{record['onset']}.jpg")
        apex = _gray(tiny_corpus / key / f"img{record['apex']}.jpg")
        magnitude = np.linalg.norm(dis.calc(onset, apex, None), axis=2)
        windows = _window_means(magnitude, record["onset_landmarks"])
        displacement = np.linalg.norm(record["apex_displacement"], axis=1)
        moving_means.append(windows[displacement >= 0.5 * displacement.max()].mean())
        still_means.append(windows[displacement == 0].mean())
    ratio = np.mean(moving_means) / np.mean(still_means)
    print(f"DIS flow onset->apex, 7x7 windows: moving {np.mean(moving_means):.3f} px, still {np.mean(still_means):.3f} "
          f"px, ratio {ratio:.2f}")
    assert ratio >= 3.0


def test_rendered_motion_has_the_ground_truth_direction(tmp_path: Path) -> None:
    # Without nuisances the flow at the moving landmarks must reproduce the true displacement vectors.
    root = generate_corpus(tmp_path / "clean", seed=2, subjects=1, clips_per_subject=3, frames_per_clip=(16, 16),
                           noise_sigma=0.0, head_step_px=0.0, head_step_deg=0.0, illumination_drift=0.0,
                           jpeg_quality=100, apex_displacement_px=(1.5, 2.0), workers=1)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    for key, record in load_ground_truth(root).items():
        flow = tvl1.calc(_gray(root / key / f"img{record['onset']}.jpg"),
                         _gray(root / key / f"img{record['apex']}.jpg"), None)
        truth = record["apex_displacement"]
        moving = np.linalg.norm(truth, axis=1) >= 0.5 * np.linalg.norm(truth, axis=1).max()
        points = np.rint(record["onset_landmarks"][moving]).astype(int)
        measured = flow[points[:, 1], points[:, 0]]
        cosine = (measured * truth[moving]).sum(1) / (
            np.linalg.norm(measured, axis=1) * np.linalg.norm(truth[moving], axis=1))
        assert np.median(cosine) > 0.9, key
        gain = np.linalg.norm(measured, axis=1).mean() / np.linalg.norm(truth[moving], axis=1).mean()
        assert 0.6 < gain < 1.4, key


def test_faces_are_found_by_dlib_at_the_true_landmarks(tiny_corpus: Path) -> None:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_predictor_path()))
    for key, record in load_ground_truth(tiny_corpus).items():
        for frame in (record["onset"], record["apex"]):
            image = cv2.imread(str(tiny_corpus / key / f"img{frame}.jpg"))[..., ::-1].copy()
            faces = detector(image, 0)
            assert len(faces) == 1, (key, frame)
            assert faces[0].width() >= 80
            shape = predictor(image, faces[0])
            found = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
            assert np.linalg.norm(found - record["onset_landmarks"], axis=1).mean() < 3.0, (key, frame)


def test_racing_jobs_generate_the_corpus_once(tmp_path: Path, synthetic_dataset_yaml, monkeypatch) -> None:
    """The jobs of a sweep over new configurations find the corpus missing together: one generates it."""
    from concurrent.futures import ThreadPoolExecutor

    import mer.synthetic as synthetic

    calls = []
    real = synthetic.generate_corpus

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_corpus", counted)
    cfg = synthetic_dataset_yaml.copy()
    cfg.root = str(tmp_path / "shared")
    cfg.generator = {"seed": 1, "subjects": 1, "clips_per_subject": 1, "frames_per_clip": [12, 12], "workers": 1}
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda _: synthetic.ensure_corpus(cfg), range(3)))
    assert roots == [tmp_path / "shared"] * 3 and len(calls) == 1
    assert len(_sheet_rows(tmp_path / "shared")) == 1

"""The dataset layouts: FaceForensics++, Celeb-DF v2, DFDC, CSV; detection and bad input."""
import json

import pytest

from worker.evaluation.datasets import (CELEB_DF, CSV, DFDC, FFPP, DatasetError, detect_layout,
                                        load_dataset)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _labels(dataset):
    return {v.key: (v.label, v.group) for v in dataset.videos}


def test_faceforensics_folders(tmp_path):
    for rel in ("original_sequences/youtube/c23/videos/000.mp4",
                "original_sequences/youtube/c40/videos/000.mp4",
                "original_sequences/actors/c23/videos/01__walking.mp4",
                "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4",
                "manipulated_sequences/NeuralTextures/c23/videos/003_000.mp4",
                "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__4JSG.mp4",
                "manipulated_sequences/Deepfakes/c23/videos/notes.txt",
                "manipulated_sequences/Deepfakes/c23/masks/videos/000_003.mp4"):
        _touch(tmp_path / rel)
    assert detect_layout(tmp_path) == FFPP
    found = _labels(load_dataset(tmp_path, compression="c23"))
    assert found == {
        "original_sequences/youtube/c23/videos/000.mp4": (0, "000"),
        "original_sequences/actors/c23/videos/01__walking.mp4": (0, "01"),
        "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4": (1, "000"),
        "manipulated_sequences/NeuralTextures/c23/videos/003_000.mp4": (1, "003"),
        "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__4JSG.mp4": (1, "01"),
    }
    assert len(load_dataset(tmp_path).videos) == 6  # every compression level


def test_faceforensics_without_videos_names_the_expected_folders(tmp_path):
    (tmp_path / "original_sequences" / "youtube").mkdir(parents=True)
    with pytest.raises(DatasetError, match="original_sequences/<youtube|actors>"):
        load_dataset(tmp_path)


def test_celeb_df_list_one_means_real(tmp_path):
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00170.mp4\n1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id16_0000.mp4\n\n")
    assert detect_layout(tmp_path) == CELEB_DF
    dataset = load_dataset(tmp_path / "List_of_testing_videos.txt")
    assert dataset.root == tmp_path.resolve()
    assert _labels(dataset) == {"YouTube-real/00170.mp4": (0, "00170"),
                                "Celeb-real/id0_0000.mp4": (0, "id0"),
                                "Celeb-synthesis/id0_id16_0000.mp4": (1, "id0")}


def test_celeb_df_bad_line(tmp_path):
    (tmp_path / "List_of_testing_videos.txt").write_text("1 Celeb-real/a.mp4\nfake Celeb-synthesis/b.mp4\n")
    with pytest.raises(DatasetError, match=r"List_of_testing_videos.txt:2"):
        load_dataset(tmp_path)


def test_dfdc_metadata_in_parts(tmp_path):
    for part, table in (("dfdc_train_part_0", {"a.mp4": {"label": "REAL", "original": None, "split": "train"},
                                               "b.mp4": {"label": "FAKE", "original": "a.mp4", "split": "train"}}),
                        ("dfdc_train_part_1", {"c.mp4": {"label": "FAKE", "original": "z.mp4", "split": "train"}})):
        (tmp_path / part).mkdir()
        (tmp_path / part / "metadata.json").write_text(json.dumps(table))
    assert detect_layout(tmp_path) == DFDC
    assert _labels(load_dataset(tmp_path)) == {"dfdc_train_part_0/a.mp4": (0, "a"),
                                               "dfdc_train_part_0/b.mp4": (1, "a"),
                                               "dfdc_train_part_1/c.mp4": (1, "z")}
    assert len(load_dataset(tmp_path / "dfdc_train_part_1" / "metadata.json").videos) == 1


def test_dfdc_bad_label(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "MAYBE"}}))
    with pytest.raises(DatasetError, match="'MAYBE'"):
        load_dataset(tmp_path)


def test_csv_labels_and_relative_paths(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label,group\nclips/a.mp4,fake,p1\nclips/b.mp4,0,\n"
                                         "clips/c.mp4,REAL,p2\nd.mp4,1,p1\n")
    assert detect_layout(tmp_path) == CSV
    dataset = load_dataset(tmp_path)
    assert _labels(dataset) == {"clips/a.mp4": (1, "p1"), "clips/b.mp4": (0, None),
                                "clips/c.mp4": (0, "p2"), "d.mp4": (1, "p1")}
    assert dataset.videos[0].path == (tmp_path / "clips" / "a.mp4").resolve()


@pytest.mark.parametrize("text, message", [
    ("file,label\na.mp4,1\n", "must name 'path' and 'label'"),
    ("path,label\na.mp4,maybe\n", r"labels.csv:2"),
    ("path,label\n", "lists no videos"),
])
def test_bad_csv(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "labels.csv")


def test_unknown_layout_and_missing_path(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="layout is one of"):
        load_dataset(tmp_path, layout="kinetics")
    with pytest.raises(DatasetError, match="no List_of_testing_videos.txt"):
        load_dataset(tmp_path, layout="celeb-df")


def test_a_video_listed_twice_and_a_misplaced_compression_are_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,1\nb.mp4,0\na.mp4,0\n")
    with pytest.raises(DatasetError, match="a.mp4 is listed twice"):
        load_dataset(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,1\n")
    with pytest.raises(DatasetError, match="only applies to FaceForensics"):
        load_dataset(tmp_path, compression="c23")

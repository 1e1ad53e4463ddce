"""The serving folder: atomic pushes, version numbering, retention and rollback, on real SavedModels."""
import os
import threading
import time

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components.blessing_pusher import serving
from components.blessing_pusher.serving import NotBlessedError, PushError, RollbackError


def save_model(path: str, scale: float) -> str:
    """A small real SavedModel whose `serving_default(x)` returns `x * scale`."""
    import tensorflow as tf

    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(scale, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return {"y": x * self.scale}

    module = Scale()
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def served_scale(version_path: str) -> float:
    import tensorflow as tf

    loaded = tf.saved_model.load(version_path)
    return float(loaded.signatures["serving_default"](x=tf.constant([1.0]))["y"].numpy()[0])


def tree(path: str):
    """Every file and folder under `path`, relative, with file sizes: a listing to compare before/after."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        out += [(os.path.join(rel, d), None) for d in dirs]
        out += [(os.path.join(rel, f), os.path.getsize(os.path.join(root, f))) for f in files]
    return sorted(out)


def files_of(path: str):
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three SavedModels with different weights: scale 1, 2, 3."""
    root = tmp_path_factory.mktemp("models")
    return {s: save_model(str(root / f"m{s}"), float(s)) for s in (1, 2, 3)}


def test_push_numbers_versions_and_copies_a_loadable_model(models, tmp_path):
    sd = str(tmp_path / "serving")
    assert serving.versions(sd) == [] and serving.serving_version(sd) is None
    r1 = serving.push(models[1], sd)
    r2 = serving.push(models[2], sd)
    assert (r1.version, r2.version) == (1, 2)
    assert r2.destination == os.path.join(sd, "2")
    assert serving.versions(sd) == [1, 2] and serving.serving_version(sd) == 2
    assert served_scale(r1.destination) == 1.0 and served_scale(r2.destination) == 2.0
    assert files_of(r2.destination) == files_of(models[2])
    assert serving.temp_dirs(sd) == []  # nothing left behind
    # An explicit version; numbering continues above the highest.
    assert serving.push(models[3], sd, version=10).version == 10
    assert serving.push(models[1], sd).version == 11


def test_versions_ignore_temp_and_non_numeric_entries(models, tmp_path):
    sd = tmp_path / "serving"
    for name in ("3", "12", ".tmp-abc", "0", "007", "latest", "-1"):
        (sd / name).mkdir(parents=True)
    (sd / "5").write_text("a file, not a version folder")
    assert serving.versions(str(sd)) == [3, 12]
    assert serving.push(models[1], str(sd)).version == 13


def test_push_never_overwrites_and_rejects_non_models(models, tmp_path):
    sd = str(tmp_path / "serving")
    serving.push(models[1], sd)
    before = tree(sd)
    with pytest.raises(PushError, match="version 1 already exists"):
        serving.push(models[2], sd, version=1)
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(PushError, match="no SavedModel"):
        serving.push(str(empty), sd)
    assert tree(sd) == before
    assert served_scale(os.path.join(sd, "1")) == 1.0


def test_a_concurrent_reader_never_sees_a_partial_version(models, tmp_path):
    sd = str(tmp_path / "serving")
    os.makedirs(sd)
    expected = files_of(models[1])
    stop = threading.Event()
    seen = {"polls": 0, "versions": set(), "tmp": 0, "problems": []}

    def reader():
        while not stop.is_set():
            seen["polls"] += 1
            for name in os.listdir(sd):
                if name.startswith(serving.TMP_PREFIX):
                    seen["tmp"] += 1
                    continue
                if not name.isdigit():
                    seen["problems"].append(f"unexpected entry {name!r}")
                    continue
                present = files_of(os.path.join(sd, name))
                if present != expected:
                    seen["problems"].append(f"version {name} incomplete: {present}")
                seen["versions"].add(int(name))
            # versions() is what a watcher uses: every version it lists is complete.
            for v in serving.versions(sd):
                if not os.path.isfile(os.path.join(sd, str(v), "saved_model.pb")):
                    seen["problems"].append(f"versions() listed {v} without saved_model.pb")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(12):
            serving.push(models[1], sd)
    finally:
        stop.set()
        thread.join()
    assert seen["problems"] == []
    assert serving.versions(sd) == list(range(1, 13))
    assert seen["polls"] > 12
    assert serving.temp_dirs(sd) == []


def test_retention_keeps_the_newest_and_cleans_stale_temp_folders(models, tmp_path):
    sd = str(tmp_path / "serving")
    for _ in range(5):
        serving.push(models[1], sd)
    # A crash mid-copy leaves a temp folder; one from an hour ago is stale, a fresh one may be a copy in progress.
    stale = os.path.join(sd, ".tmp-crashed")
    fresh = os.path.join(sd, ".tmp-in-progress")
    os.makedirs(os.path.join(stale, "variables"))
    os.makedirs(fresh)
    old = time.time() - 2 * serving.DEFAULT_STALE_TMP_SECONDS
    os.utime(stale, (old, old))

    result = serving.apply_retention(sd, keep=2)
    assert result.kept == [4, 5] and result.deleted == [1, 2, 3]
    assert result.removed_tmp == [".tmp-crashed"]
    assert serving.versions(sd) == [4, 5]
    assert serving.temp_dirs(sd) == [".tmp-in-progress"]
    assert served_scale(os.path.join(sd, "5")) == 1.0

    again = serving.apply_retention(sd, keep=2, stale_tmp_seconds=0)
    assert again.deleted == [] and again.removed_tmp == [".tmp-in-progress"]
    assert sorted(os.listdir(sd)) == ["4", "5"]
    # keep=1 still keeps the serving version; keep=0 is refused.
    assert serving.apply_retention(sd, keep=1).kept == [5]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        serving.apply_retention(sd, keep=0)
    assert serving.versions(sd) == [5]


def test_rollback_to_the_previous_version_is_a_new_highest_version(models, tmp_path):
    sd = str(tmp_path / "serving")
    for s in (1, 2, 3):
        serving.push(models[s], sd)
    result = serving.rollback(sd)
    assert (result.from_version, result.to_version, result.new_version) == (3, 2, 4)
    assert result.destination == os.path.join(sd, "4")
    assert serving.versions(sd) == [1, 2, 3, 4]  # history stays
    assert serving.serving_version(sd) == 4
    assert served_scale(os.path.join(sd, "4")) == 2.0
    assert files_of(os.path.join(sd, "4")) == files_of(os.path.join(sd, "2"))
    assert serving.temp_dirs(sd) == []


def test_rollback_to_an_explicit_version(models, tmp_path):
    sd = str(tmp_path / "serving")
    for s in (1, 2, 3):
        serving.push(models[s], sd)
    result = serving.rollback(sd, to_version=1)
    assert (result.from_version, result.to_version, result.new_version) == (3, 1, 4)
    assert served_scale(os.path.join(sd, "4")) == 1.0


def test_rollback_to_a_missing_version_changes_nothing(models, tmp_path):
    sd = str(tmp_path / "serving")
    for s in (1, 2, 3):
        serving.push(models[s], sd)
    serving.apply_retention(sd, keep=2)  # versions 2, 3
    before = tree(sd)
    with pytest.raises(RollbackError) as info:
        serving.rollback(sd, to_version=7)
    assert str(info.value) == f"version 7 does not exist in {sd}; available: 2, 3"
    with pytest.raises(RollbackError, match="version 1 does not exist .* available: 2, 3"):
        serving.rollback(sd, to_version=1)
    with pytest.raises(RollbackError, match="already the serving version"):
        serving.rollback(sd, to_version=3)
    assert tree(sd) == before


def test_rollback_needs_an_earlier_version(models, tmp_path):
    sd = str(tmp_path / "serving")
    with pytest.raises(RollbackError, match="no model versions"):
        serving.rollback(sd)
    assert not os.path.exists(sd)
    serving.push(models[1], sd)
    before = tree(sd)
    with pytest.raises(RollbackError, match="only version 1 exists"):
        serving.rollback(sd)
    assert tree(sd) == before


def test_push_blessed_pushes_only_blessed_models(models, tmp_path):
    sd = str(tmp_path / "serving")
    with pytest.raises(NotBlessedError, match="not blessed: auc 0.52 < min_auc 0.6") as info:
        serving.push_blessed(models[1], {"blessed": 0, "reason": "auc 0.52 < min_auc 0.6"}, sd)
    assert info.value.reason == "auc 0.52 < min_auc 0.6"
    with pytest.raises(NotBlessedError, match="no reason recorded"):
        serving.push_blessed(models[1], {}, sd)
    with pytest.raises(NotBlessedError, match="latency_blessing is not blessed: p99 31 ms > 20 ms"):
        serving.push_blessed(models[1], {"blessed": 1, "reason": "ok"}, sd,
                             more_blessings={"latency_blessing": {"blessed": 0, "reason": "p99 31 ms > 20 ms"}})
    with pytest.raises(NotBlessedError):  # a string "1" is not the int property
        serving.push_blessed(models[1], {"blessed": "1"}, sd)
    assert serving.versions(sd) == []
    result = serving.push_blessed(models[1], {"blessed": 1, "reason": "auc 0.71"}, sd)
    assert result.version == 1 and served_scale(result.destination) == 1.0

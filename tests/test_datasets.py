"""Dataset preparation: every source format, resume and idempotence, corrupt files, the embedded faces."""

import contextlib
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import prepare as prepare_cli
from datasets import (
    DatasetPreparationWarning,
    DatasetSourceError,
    OutputFolderError,
    UnknownDatasetError,
    UnreadableImagesError,
    prepare_dataset,
)
from guided_diffusion.image_ops import ImageDecodeError, center_crop_arr, decode_image, to_rgb

REPO = Path(__file__).resolve().parent.parent
PREPARE = REPO / "datasets" / "prepare.py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIZE = 16


def run_quietly(*args, **kwargs):
    """prepare_dataset with no progress bar, returning (result, warning messages)."""
    kwargs.setdefault("workers", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prepare_dataset(*args, progress=False, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, DatasetPreparationWarning)]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def random_image(rng, width=40, height=32):
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def add_to_tar(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def output_files(out_dir):
    return sorted(p.relative_to(out_dir).as_posix() for p in Path(out_dir).rglob("*.png"))


def load(path):
    return np.array(Image.open(path))


def manifest_of(out_dir):
    return json.loads((Path(out_dir) / "manifest.json").read_text())


def assert_checksums_match_files(out_dir):
    lines = (Path(out_dir) / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    assert sorted(listed) == output_files(out_dir)
    for name, digest in listed.items():
        assert hashlib.sha256((Path(out_dir) / name).read_bytes()).hexdigest() == digest
    text = (Path(out_dir) / "SHA256SUMS").read_bytes()
    assert manifest_of(out_dir)["content_sha256"] == hashlib.sha256(text).hexdigest()


# ---------------------------------------------------------------- CIFAR-10


def make_cifar_tarball(path, per_batch, seed=0):
    """A cifar-10-python.tar.gz with the real layout; returns the (N, 3072) pixels and labels."""
    rng = np.random.default_rng(seed)
    all_data, all_labels = [], []
    with tarfile.open(path, "w:gz") as archive:
        names = [c.encode() for c in CIFAR_CLASSES]
        meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
        add_to_tar(archive, "cifar-10-batches-py/batches.meta", pickle.dumps(meta))
        for batch in range(1, 6):
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            # 7 is coprime to 10, so 10 or more images cover every class.
            labels = [int(x) for x in (np.arange(per_batch) + (batch - 1) * per_batch) * 7 % 10]
            content = {
                b"batch_label": f"training batch {batch} of 5".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{batch}_{i}.png".encode() for i in range(per_batch)],
            }
            add_to_tar(archive, f"cifar-10-batches-py/data_batch_{batch}", pickle.dumps(content))
            all_data.append(data)
            all_labels += labels
        add_to_tar(archive, "cifar-10-batches-py/test_batch", pickle.dumps({b"data": data, b"labels": labels}))
    return np.concatenate(all_data), all_labels


def test_cifar10_tarball_gives_class_prefixed_native_pngs_and_manifest(tmp_path):
    pixels, labels = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", per_batch=4)
    result, messages = run_quietly("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out")

    expected_names = [f"{CIFAR_CLASSES[label]}_{index:05d}.png" for index, label in enumerate(labels)]
    assert output_files(tmp_path / "out") == sorted(expected_names)
    for index, name in enumerate(expected_names):
        row = pixels[index]
        planes = [row[0:1024], row[1024:2048], row[2048:3072]]
        expected = np.stack([plane.reshape(32, 32) for plane in planes], axis=-1)
        np.testing.assert_array_equal(load(tmp_path / "out" / name), expected)

    manifest = manifest_of(tmp_path / "out")
    assert manifest["dataset"] == "cifar10" and manifest["count"] == 20 and manifest["image_size"] == 32
    assert manifest["class_map"] == {name: i for i, name in enumerate(CIFAR_CLASSES)}
    assert manifest["class_counts"] == {
        name: labels.count(i) for i, name in enumerate(CIFAR_CLASSES) if labels.count(i)
    }
    assert manifest["complete"] is True and manifest["expected_count"] == 50_000
    assert result.count == 20 and result.written == 20
    assert any("20 images prepared but the dataset has 50,000" in m for m in messages)
    assert_checksums_match_files(tmp_path / "out")


def test_cifar10_extracted_folder_and_image_size_flag(tmp_path):
    make_cifar_tarball(tmp_path / "c.tar.gz", per_batch=1)
    with tarfile.open(tmp_path / "c.tar.gz") as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    result, _ = run_quietly("cifar10", tmp_path / "extracted", tmp_path / "out", image_size=64)
    names = output_files(tmp_path / "out")
    assert len(names) == 5 and result.image_size == 64
    assert all(load(tmp_path / "out" / n).shape == (64, 64, 3) for n in names)


def test_cifar10_missing_batch_is_named(tmp_path):
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as archive:
        add_to_tar(archive, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [b"cat"]}))
    with pytest.raises(DatasetSourceError, match="data_batch_1"):
        run_quietly("cifar10", tmp_path / "c.tar.gz", tmp_path / "out")


# ---------------------------------------------------------------- zips and folders


def test_ffhq_zip_uses_images1024x1024_and_preprocesses_like_adm(tmp_path):
    rng = np.random.default_rng(1)
    sources = {"00000/00000.png": random_image(rng), "00000/00001.png": random_image(rng, 32, 48),
               "01000/01000.png": random_image(rng, 64, 64)}
    with zipfile.ZipFile(tmp_path / "ffhq.zip", "w") as archive:
        for name, image in sources.items():
            archive.writestr(f"ffhq-dataset/images1024x1024/{name}", png_bytes(image))
        archive.writestr("ffhq-dataset/thumbnails128x128/00000.png", png_bytes(random_image(rng)))
        archive.writestr("ffhq-dataset/LICENSE.txt", b"licence")
        archive.writestr("__MACOSX/ffhq-dataset/images1024x1024/._00002.png", b"resource fork")

    run_quietly("ffhq", tmp_path / "ffhq.zip", tmp_path / "out", image_size=SIZE)

    assert output_files(tmp_path / "out") == ["00000.png", "00001.png", "01000.png"]
    for name, image in sources.items():
        out = load(tmp_path / "out" / Path(name).name)
        np.testing.assert_array_equal(out, center_crop_arr(image, SIZE))
    manifest = manifest_of(tmp_path / "out")
    assert manifest["class_map"] is None and manifest["count"] == 3 and manifest["image_size"] == SIZE


def test_centre_crop_geometry_of_a_wide_image(tmp_path):
    """48x32 with red/green/blue thirds -> halved to 24x16 -> centre 16 columns: 4 red, 8 green, 4 blue."""
    stripes = np.zeros((32, 48, 3), dtype=np.uint8)
    for third in range(3):
        stripes[:, 16 * third : 16 * (third + 1), third] = 255
    (tmp_path / "src").mkdir()
    Image.fromarray(stripes).save(tmp_path / "src" / "wide.png")
    run_quietly("celebahq", tmp_path / "src", tmp_path / "out", image_size=SIZE)
    out = load(tmp_path / "out" / "wide.png")
    expected = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    expected[:, :4, 0] = expected[:, 4:12, 1] = expected[:, 12:, 2] = 255
    np.testing.assert_array_equal(out, expected)


def test_16_bit_pngs_are_scaled_by_their_bit_depth_not_by_each_image(tmp_path):
    # 200 and 300 of 65535 are both near black; scaled by each image's own maximum, 200 read as 200 of 255.
    values = (200, 300, 40000, 65535)
    for value in values:
        Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / f"{value}.png")
    assert Image.open(tmp_path / "200.png").mode.startswith("I")
    decoded = {v: np.asarray(decode_image((tmp_path / f"{v}.png").read_bytes(), f"{v}.png")) for v in values}
    assert all(a.shape == (4, 4, 3) and a.dtype == np.uint8 for a in decoded.values())
    assert {v: set(a.ravel().tolist()) for v, a in decoded.items()} == {200: {1}, 300: {1}, 40000: {156}, 65535: {255}}
    Image.fromarray(np.full((4, 4), 200, dtype=np.int32)).save(tmp_path / "deep32.tif")
    with pytest.raises(ImageDecodeError, match=r"cannot read image deep32.tif: 32-bit integer pixels"):
        decode_image((tmp_path / "deep32.tif").read_bytes(), "deep32.tif")


def test_grayscale_rgba_palette_and_16_bit_become_rgb(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("L", (24, 24), 100).save(src / "gray.png")
    palette = Image.new("P", (24, 24), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    palette.save(src / "palette.png")
    Image.fromarray(np.full((24, 24), 40000, dtype=np.uint16)).save(src / "deep.png")
    rgba = np.random.default_rng(2).integers(0, 256, (24, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(src / "alpha.png")
    Image.new("LA", (24, 24), (60, 128)).save(src / "gray_alpha.png")

    run_quietly("metfaces", src, tmp_path / "out", image_size=SIZE)
    out = {name: load(tmp_path / "out" / name) for name in output_files(tmp_path / "out")}
    assert sorted(out) == ["alpha.png", "deep.png", "gray.png", "gray_alpha.png", "palette.png"]
    assert all(a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 for a in out.values())
    assert (out["gray.png"] == 100).all()
    assert (out["palette.png"] == np.array([10, 200, 30], dtype=np.uint8)).all()
    assert (out["deep.png"] == round(40000 / 65535 * 255)).all()
    assert (out["gray_alpha.png"] == out["gray_alpha.png"][0, 0]).all()
    np.testing.assert_array_equal(out["alpha.png"], center_crop_arr(to_rgb(Image.open(src / "alpha.png")), SIZE))


def test_afhq_dog_takes_only_train_dog_from_root_folder_or_zip(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "afhq"
    layout = {"train/dog": ["flickr_dog_000002.jpg", "pixabay_dog_000010.jpg"], "train/cat": ["flickr_cat_000001.jpg"],
              "val/dog": ["flickr_dog_000043.jpg"]}
    with zipfile.ZipFile(tmp_path / "afhq.zip", "w") as archive:
        for folder, names in layout.items():
            (root / folder).mkdir(parents=True)
            for name in names:
                data = jpeg_bytes(random_image(rng, 32, 32))
                (root / folder / name).write_bytes(data)
                archive.writestr(f"afhq/{folder}/{name}", data)

    expected = ["flickr_dog_000002.png", "pixabay_dog_000010.png"]
    hashes = set()
    for source, workers in ((root, 1), (root / "train" / "dog", 1), (tmp_path / "afhq.zip", 2)):
        out = tmp_path / f"out_{len(hashes)}_{source.name}"
        result, _ = run_quietly("afhq_dog", source, out, image_size=SIZE, workers=workers)
        assert output_files(out) == expected
        hashes.add(result.content_sha256)
    assert len(hashes) == 1

    with pytest.raises(DatasetSourceError, match="train/dog"):
        run_quietly("afhq_dog", root / "val", tmp_path / "out_bad")


def test_output_and_source_folders_must_not_nest(tmp_path):
    (tmp_path / "src").mkdir()
    random_image(np.random.default_rng(0)).save(tmp_path / "src" / "a.png")
    for out in (tmp_path / "src" / "out", tmp_path / "src", tmp_path):
        with pytest.raises(ValueError, match="must not contain each other"):
            run_quietly("ffhq", tmp_path / "src", out)
    assert not (tmp_path / "src" / "out").exists() and not (tmp_path / "manifest.json").exists()


def test_duplicate_output_names_are_an_error_naming_both(tmp_path):
    rng = np.random.default_rng(4)
    for folder in ("a", "b"):
        (tmp_path / "src" / folder).mkdir(parents=True)
        random_image(rng).save(tmp_path / "src" / folder / "face.png")
    with pytest.raises(DatasetSourceError, match=r"a/face\.png and .*b/face\.png"):
        run_quietly("celebahq", tmp_path / "src", tmp_path / "out")


# ---------------------------------------------------------------- ImageNet


def make_imagenet_sources(tmp_path):
    """The same 5 JPEGs as synset folders, a folder of per-class tars, and an outer train tar."""
    rng = np.random.default_rng(5)
    classes = {"n01440764": ["n01440764_10026.JPEG", "n01440764_2708.JPEG"],
               "n01443537": ["n01443537_16.JPEG", "n01443537_9.JPEG", "stray.JPEG"]}
    folders, tars = tmp_path / "train", tmp_path / "tars"
    tars.mkdir()
    for wnid, names in classes.items():
        (folders / wnid).mkdir(parents=True)
        with tarfile.open(tars / f"{wnid}.tar", "w") as archive:
            for name in names:
                data = jpeg_bytes(random_image(rng, 48, 36))
                (folders / wnid / name).write_bytes(data)
                add_to_tar(archive, name, data)
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in classes:
            outer.add(tars / f"{wnid}.tar", arcname=f"{wnid}.tar")
    return folders, tars, tmp_path / "ILSVRC2012_img_train.tar"


def test_imagenet_folders_class_tars_and_train_tar_agree(tmp_path):
    sources = make_imagenet_sources(tmp_path)
    expected = ["n01440764/n01440764_10026.png", "n01440764/n01440764_2708.png", "n01443537/n01443537_16.png",
                "n01443537/n01443537_9.png", "n01443537/n01443537_stray.png"]
    hashes = set()
    for index, source in enumerate(sources):
        out = tmp_path / f"out{index}"
        # The train tar also goes through worker processes: its images travel to them as bytes.
        workers = 2 if index == 2 else 1
        result, messages = run_quietly("imagenet", source, out, image_size=SIZE, workers=workers)
        assert output_files(out) == expected
        assert result.class_map == {"n01440764": 0, "n01443537": 1}
        manifest = manifest_of(out)
        assert manifest["class_counts"] == {"n01440764": 2, "n01443537": 3}
        assert any("1,281,167" in m for m in messages)
        hashes.add(manifest["content_sha256"])
        assert_checksums_match_files(out)
    assert len(hashes) == 1
    original = Image.open(sources[0] / "n01443537" / "n01443537_9.JPEG")
    np.testing.assert_array_equal(load(tmp_path / "out0/n01443537/n01443537_9.png"), center_crop_arr(original, SIZE))


def test_training_loader_reads_prepared_folders_with_the_manifest_labels(tmp_path):
    from guided_diffusion.image_datasets import class_labels, list_image_files_recursively

    folders, _, _ = make_imagenet_sources(tmp_path)
    make_cifar_tarball(tmp_path / "cifar.tar.gz", per_batch=2)
    for dataset, source in (("imagenet", folders), ("cifar10", tmp_path / "cifar.tar.gz")):
        out = tmp_path / dataset
        run_quietly(dataset, source, out, image_size=SIZE)
        paths = list_image_files_recursively(str(out))
        assert sorted(Path(p).relative_to(out).as_posix() for p in paths) == output_files(out)
        labels, classes = class_labels(paths)
        class_map = manifest_of(out)["class_map"]
        assert classes == sorted(class_map, key=class_map.get)
        assert labels == [class_map[Path(p).name.split("_")[0]] for p in paths]


def test_imagenet_single_class_tar_and_bad_folder(tmp_path):
    _, tars, _ = make_imagenet_sources(tmp_path)
    run_quietly("imagenet", tars / "n01440764.tar", tmp_path / "out", image_size=SIZE)
    assert output_files(tmp_path / "out") == ["n01440764/n01440764_10026.png", "n01440764/n01440764_2708.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetSourceError, match="no synset folders"):
        run_quietly("imagenet", tmp_path / "empty", tmp_path / "out2")


# ---------------------------------------------------------------- corrupt files, strictness


def make_folder_with_corrupt_files(path):
    rng = np.random.default_rng(6)
    path.mkdir()
    for index in range(3):
        random_image(rng).save(path / f"good{index}.png")
    whole = png_bytes(random_image(rng, 64, 64))
    (path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (path / "garbage.jpg").write_bytes(b"this is not a jpeg")


def test_corrupt_files_are_reported_by_name_and_skipped(tmp_path):
    make_folder_with_corrupt_files(tmp_path / "src")
    result, messages = run_quietly("ffhq", tmp_path / "src", tmp_path / "out", image_size=SIZE)
    assert output_files(tmp_path / "out") == ["good0.png", "good1.png", "good2.png"]
    assert [Path(origin).name for origin, _ in result.unreadable] == ["garbage.jpg", "truncated.png"]
    summary = next(m for m in messages if "unreadable" in m)
    assert summary.startswith("2 unreadable") and "garbage.jpg" in summary and "truncated.png" in summary
    manifest = manifest_of(tmp_path / "out")
    assert [Path(entry["source"]).name for entry in manifest["unreadable"]] == ["garbage.jpg", "truncated.png"]
    assert manifest["count"] == 3


def test_strict_mode_fails_naming_the_files_and_leaves_no_complete_manifest(tmp_path):
    make_folder_with_corrupt_files(tmp_path / "src")
    with pytest.raises(UnreadableImagesError, match="garbage.jpg.*truncated.png"):
        run_quietly("ffhq", tmp_path / "src", tmp_path / "out", image_size=SIZE, strict=True)
    assert manifest_of(tmp_path / "out")["complete"] is False


# ---------------------------------------------------------------- resume and idempotence


def test_rerun_is_a_noop_and_interrupted_run_completes(tmp_path):
    out = tmp_path / "out"
    first, _ = run_quietly("embedded", None, out, num_images=24)
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}

    again, _ = run_quietly("embedded", None, out, num_images=24)
    assert again.written == 0 and again.already_present == 24
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    originals = {name: (out / name).read_bytes() for name in ("embedded_000003.png", "embedded_000017.png")}
    for name in originals:
        (out / name).unlink()
    (out / ".tmp-embedded_000005.png.x1y2z3").write_bytes(b"half an image")
    (out / "SHA256SUMS").unlink()
    resumed, _ = run_quietly("embedded", None, out, num_images=24)
    assert resumed.written == 2 and resumed.count == 24
    assert not list(out.glob(".tmp-*"))
    assert all((out / name).read_bytes() == data for name, data in originals.items())
    assert resumed.content_sha256 == first.content_sha256
    assert_checksums_match_files(out)


def test_output_folder_refuses_other_size_dataset_or_seed(tmp_path):
    run_quietly("embedded", None, tmp_path / "out", num_images=2)
    with pytest.raises(OutputFolderError, match="image_size"):
        run_quietly("embedded", None, tmp_path / "out", num_images=2, image_size=64)
    with pytest.raises(OutputFolderError, match="seed"):
        run_quietly("embedded", None, tmp_path / "out", num_images=2, seed=1)


def test_stray_images_in_output_are_warned_about(tmp_path):
    run_quietly("embedded", None, tmp_path / "out", num_images=2)
    Image.new("RGB", (32, 32)).save(tmp_path / "out" / "someone_elses.png")
    _, messages = run_quietly("embedded", None, tmp_path / "out", num_images=2)
    assert any("1 image(s) not made from this source" in m and "someone_elses.png" in m for m in messages)


def test_killed_run_resumes_to_the_full_count(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(PREPARE), "embedded", str(out), "--num_images", "1500", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.glob("embedded_*.png"))) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    written_before = len(list(out.glob("embedded_*.png")))
    assert 100 <= written_before < 1500

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"already present {written_before:,}" in finished.stdout
    assert len(list(out.glob("embedded_*.png"))) == 1500 and not list(out.glob(".*"))
    assert manifest_of(out)["count"] == 1500
    assert_checksums_match_files(out)


# ---------------------------------------------------------------- embedded dataset


def test_embedded_is_byte_identical_per_seed_whatever_the_workers(tmp_path):
    one, _ = run_quietly("embedded", None, tmp_path / "a", num_images=40, seed=7, workers=1)
    two, _ = run_quietly("embedded", None, tmp_path / "b", num_images=40, seed=7, workers=2)
    other, _ = run_quietly("embedded", None, tmp_path / "c", num_images=40, seed=8, workers=1)
    names = output_files(tmp_path / "a")
    assert names == [f"embedded_{i:06d}.png" for i in range(40)]
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    assert one.content_sha256 == two.content_sha256 != other.content_sha256
    assert sum((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n in names) == 40


def test_embedded_prefix_is_stable_and_64px_works(tmp_path):
    run_quietly("embedded", None, tmp_path / "small", num_images=5)
    run_quietly("embedded", None, tmp_path / "large", num_images=9)
    for name in output_files(tmp_path / "small"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()
    run_quietly("embedded", None, tmp_path / "big", num_images=3, image_size=64)
    assert all(load(tmp_path / "big" / n).shape == (64, 64, 3) for n in output_files(tmp_path / "big"))


def test_embedded_colour_statistics_vary_between_and_within_images(tmp_path):
    run_quietly("embedded", None, tmp_path / "out", num_images=64)
    images = np.stack([load(tmp_path / "out" / n).astype(np.float64) for n in output_files(tmp_path / "out")])
    per_image_mean = images.mean(axis=(1, 2))  # (64, 3)
    per_image_std = images.std(axis=(1, 2))
    assert (per_image_mean.std(axis=0) > 15).all(), "backgrounds and faces should vary in colour"
    assert (per_image_std > 5).all(), "every image should have structure, not a flat colour"
    channel_gaps = np.abs(per_image_mean[:, 0] - per_image_mean[:, 2])
    assert np.median(channel_gaps) > 5, "channels should differ, so a colour shift is measurable"
    centre = images[:, 12:20, 12:20].mean(axis=(1, 2))
    corners = images[:, :4, :4].mean(axis=(1, 2))
    assert np.abs(centre - corners).mean() > 20, "the face should stand out from the background"


# ---------------------------------------------------------------- the script


def run_script(*args):
    """datasets/prepare.py's main, in this process: (returncode, stdout, stderr) like a finished process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = prepare_cli.main([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def test_script_prepares_cifar10(tmp_path):
    make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", per_batch=2)
    finished = run_script("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out", "--workers", "1")
    assert finished.returncode == 0, finished.stderr
    assert "cifar10: 10 images at 32x32" in finished.stdout
    assert "warning: cifar10: 10 images prepared but the dataset has 50,000" in finished.stderr
    assert len(output_files(tmp_path / "out")) == 10


@pytest.mark.parametrize(
    "args, needle",
    [
        (("ffhq", "{tmp}/missing.zip", "{tmp}/out"), "{tmp}/missing.zip"),
        (("ffhq", "{tmp}/notes.txt", "{tmp}/out"), "unrecognised source format: {tmp}/notes.txt"),
        (("mnist", "{tmp}/src", "{tmp}/out"), "unknown dataset 'mnist'; valid: afhq_dog, celebahq, cifar10, embedded"),
        (("embedded", "{tmp}/src", "{tmp}/out"), "embedded takes <out_dir>"),
        (("ffhq", "{tmp}/src", "{tmp}/out", "--seed", "3"), "--seed applies only to generated datasets"),
    ],
)
def test_script_bad_input_exits_nonzero_with_one_line(tmp_path, args, needle):
    (tmp_path / "notes.txt").write_text("not images")
    (tmp_path / "src").mkdir()
    finished = run_script(*(a.format(tmp=tmp_path) for a in args))
    assert finished.returncode != 0
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_in_library():
    valid = "valid: afhq_dog, celebahq, cifar10, embedded, ffhq, imagenet, metfaces"
    with pytest.raises(UnknownDatasetError, match=valid):
        prepare_dataset("lsun", "x", "y")


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 clockwise to view) is read upright."""
    import io

    from PIL import Image

    from guided_diffusion.image_ops import decode_image

    stored = np.zeros((8, 16, 3), dtype=np.uint8)  # 8 high, 16 wide as stored
    stored[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    upright = np.asarray(decode_image(buffer.getvalue(), "sideways.png"))
    assert upright.shape == (16, 8, 3)
    # Rotating 90 degrees clockwise puts the stored left half on top.
    assert upright[:8].min() == 255 and upright[8:].max() == 0
    plain = io.BytesIO()
    Image.fromarray(stored).save(plain, format="PNG")
    assert np.array_equal(np.asarray(decode_image(plain.getvalue(), "plain.png")), stored)

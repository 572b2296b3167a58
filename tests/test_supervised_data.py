"""Tests of the supervised data layer: task batches, sinusoids, episodes and Omniglot."""

import functools
import hashlib
import io
import math
import threading
import urllib.error
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rlmaml.supervised import (
    EpisodeSampler,
    OmniglotCorruptError,
    OmniglotData,
    OmniglotNotFoundError,
    SinusoidTasks,
    TaskBatch,
    background_split,
    download_omniglot,
    load_omniglot,
    omniglot,
    paper_split,
)

# sha256 of the shared zips, from the README next to them.
SHARED_SHA256 = {
    "images_background.zip": "0ca674f1c02257123afb1ae3337b536f9c4d0181ca780d9af318151efb4e45bc",
    "images_evaluation.zip": "fd45a41e89479c48ddc20ba2db00bee78297e97e337db2b9eba978d143193271",
}
# Character counts of the miniature Omniglot that the loader tests write.
FAKE_CHARACTERS = {"background": 3, "evaluation": 2}


# --- TaskBatch --------------------------------------------------------------------------------


def test_task_batch_to_moves_every_tensor() -> None:
    batch = TaskBatch(*(torch.zeros(2, 3) for _ in range(4)))
    moved = batch.to("meta")
    assert isinstance(moved, TaskBatch)
    assert all(tensor.device.type == "meta" for tensor in moved)
    assert all(tensor.device.type == "cpu" for tensor in batch)


# --- Sinusoid ---------------------------------------------------------------------------------


def test_sinusoid_shapes_and_dtypes() -> None:
    batch = SinusoidTasks().sample(4, 5, 7, np.random.default_rng(0))
    assert batch.support_x.shape == batch.support_y.shape == (4, 5, 1)
    assert batch.query_x.shape == batch.query_y.shape == (4, 7, 1)
    assert all(tensor.dtype == torch.float32 for tensor in batch)


def test_sinusoid_ranges_and_targets() -> None:
    tasks = SinusoidTasks()
    rng = np.random.default_rng(1)
    params = tasks.sample_params(2000, rng)
    assert 0.1 <= params.amplitude.min() and params.amplitude.max() <= 5.0
    assert 0.0 <= params.phase.min() and params.phase.max() <= math.pi
    batch = tasks.sample_points(params, 10, 10, rng)
    x = torch.cat([batch.support_x, batch.query_x], dim=1)[..., 0].double()
    y = torch.cat([batch.support_y, batch.query_y], dim=1)[..., 0].double()
    assert x.min() >= -5.0 and x.max() <= 5.0
    expected = torch.from_numpy(params.evaluate(x.numpy()))
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-5)


def test_sinusoid_custom_ranges() -> None:
    tasks = SinusoidTasks(amplitude_range=(1.0, 1.0), phase_range=(0.0, 0.0), x_range=(0.0, 1.0))
    batch = tasks.sample(3, 4, 4, np.random.default_rng(0))
    torch.testing.assert_close(batch.support_y, torch.sin(batch.support_x))


def test_sinusoid_seeding() -> None:
    tasks = SinusoidTasks()
    first = tasks.sample(3, 5, 5, np.random.default_rng(42))
    again = tasks.sample(3, 5, 5, np.random.default_rng(42))
    other = tasks.sample(3, 5, 5, np.random.default_rng(43))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.support_y, other.support_y)


def test_sinusoid_argument_errors() -> None:
    with pytest.raises(ValueError, match="amplitude_range"):
        SinusoidTasks(amplitude_range=(5.0, 0.1))
    with pytest.raises(ValueError, match="n_tasks"):
        SinusoidTasks().sample(0, 5, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k_support"):
        SinusoidTasks().sample(1, 0, 5, np.random.default_rng(0))


# --- Episodes ---------------------------------------------------------------------------------


def _source_images(n_classes: int = 12, n_per_class: int = 6, side: int = 5) -> np.ndarray:
    """Random uint8 images, distinct under every rotation, so each output can be traced back."""
    return np.random.default_rng(7).integers(
        0, 256, (n_classes, n_per_class, side, side), dtype=np.uint8
    )


def _trace(images: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """Finds ``(class, drawing, quarter_turns)`` of each sampled image ``x[..., 1, H, W]``."""
    origin = {}
    for c, d, k in np.ndindex(images.shape[0], images.shape[1], 4):
        origin[np.rot90(images[c, d], k).tobytes()] = (c, d, k)
    assert len(origin) == images.shape[0] * images.shape[1] * 4
    pixels = np.rint(x.numpy()[..., 0, :, :] * 255).astype(np.uint8)
    flat = pixels.reshape(-1, *pixels.shape[-2:])
    return np.array([origin[image.tobytes()] for image in flat]).reshape(*pixels.shape[:-2], 3)


def test_episode_shapes_and_labels() -> None:
    images = _source_images()
    batch = EpisodeSampler(images, ways=5, shots=2, query_shots=3).sample(
        4, np.random.default_rng(0)
    )
    assert batch.support_x.shape == (4, 10, 1, 5, 5)
    assert batch.query_x.shape == (4, 15, 1, 5, 5)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.shape == (4, 10) and batch.query_y.shape == (4, 15)
    assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
    assert 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0
    for labels, per_label in ((batch.support_y, 2), (batch.query_y, 3)):
        for row in labels:
            assert torch.equal(torch.bincount(row, minlength=5), torch.full((5,), per_label))


@pytest.mark.parametrize("rotate", [False, True])
def test_episode_provenance(rotate: bool) -> None:
    images = _source_images()
    sampler = EpisodeSampler(images, ways=4, shots=2, query_shots=3, rotate=rotate)
    batch = sampler.sample(40, np.random.default_rng(1))
    support, query = _trace(images, batch.support_x), _trace(images, batch.query_x)
    turns_seen = set()
    for t in range(40):
        origins = np.concatenate([support[t], query[t]])
        labels = torch.cat([batch.support_y[t], batch.query_y[t]]).numpy()
        classes = [set(origins[labels == label, 0]) for label in range(4)]
        assert all(len(c) == 1 for c in classes), "a label mixes classes"
        assert len(set.union(*classes)) == 4, "a class appears under two labels"
        for label in range(4):
            of_label = origins[labels == label]
            assert len(set(of_label[:, 1])) == 5, "a drawing is both support and query"
            assert len(set(of_label[:, 2])) == 1, "drawings of a class rotated differently"
            turns_seen.add(int(of_label[0, 2]))
    assert turns_seen == ({0, 1, 2, 3} if rotate else {0})


def test_episode_rotation_matches_rot90() -> None:
    images = _source_images()
    batch = EpisodeSampler(images, ways=3, shots=1, query_shots=1, rotate=True).sample(
        8, np.random.default_rng(2)
    )
    (c, d, k) = _trace(images, batch.support_x)[0, 0]
    expected = np.rot90(images[c, d], k).astype(np.float32) / 255
    np.testing.assert_array_equal(batch.support_x[0, 0, 0].numpy(), expected)
    np.testing.assert_array_equal(images, _source_images())  # the source is left untouched


def test_episode_float_images_are_not_rescaled() -> None:
    images = np.full((3, 4, 2, 2), 0.5, dtype=np.float64)
    batch = EpisodeSampler(images, ways=2, shots=1, query_shots=1).sample(
        2, np.random.default_rng(0)
    )
    assert batch.support_x.dtype == torch.float32
    assert torch.all(batch.support_x == 0.5)


def test_episode_seeding() -> None:
    sampler = EpisodeSampler(_source_images(), ways=3, shots=1, query_shots=2, rotate=True)
    first = sampler.sample(5, np.random.default_rng(3))
    again = sampler.sample(5, np.random.default_rng(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((4, 6, 5)), {}, "shape"),
        (np.zeros((4, 6, 5, 5)), {"ways": 0}, "ways must be >= 1"),
        (np.zeros((4, 6, 5, 5)), {"shots": 0}, "shots must be >= 1"),
        (np.zeros((4, 6, 5, 5)), {"query_shots": 0}, "query_shots must be >= 1"),
        (np.zeros((4, 6, 5, 5)), {"ways": 5}, "exceeds the 4 classes"),
        (np.zeros((4, 6, 5, 5)), {"shots": 3, "query_shots": 4}, "exceeds the 6 examples"),
        (np.zeros((4, 6, 5, 6)), {"rotate": True}, "square"),
    ],
)
def test_episode_argument_errors(images: np.ndarray, kwargs: dict, message: str) -> None:
    arguments = {"ways": 2, "shots": 1, "query_shots": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(images, **arguments)


def test_episode_sample_rejects_no_tasks() -> None:
    sampler = EpisodeSampler(_source_images(), ways=2, shots=1, query_shots=1)
    with pytest.raises(ValueError, match="n_tasks"):
        sampler.sample(0, np.random.default_rng(0))


# --- Omniglot on the real data ------------------------------------------------------------


def test_omniglot_loads(omniglot_data: OmniglotData) -> None:
    assert omniglot_data.images.shape == (1623, 20, 28, 28)
    assert omniglot_data.images.dtype == np.uint8
    assert omniglot_data.images.max() == 255
    assert omniglot_data.images.mean() < 64, "ink must be high on a low background"
    assert len(omniglot_data.alphabets) == 1623 and len(set(omniglot_data.alphabets)) == 50
    assert omniglot_data.background.dtype == bool
    assert omniglot_data.background[:964].all() and not omniglot_data.background[964:].any()


def _character_keys(images: np.ndarray) -> set[bytes]:
    return {character.tobytes() for character in images}


def test_paper_split(omniglot_data: OmniglotData) -> None:
    train, test = paper_split(omniglot_data)
    assert train.shape == (1200, 20, 28, 28) and test.shape == (423, 20, 28, 28)
    train_keys, test_keys = _character_keys(train), _character_keys(test)
    assert not train_keys & test_keys
    assert train_keys | test_keys == _character_keys(omniglot_data.images)
    again, _ = paper_split(omniglot_data, seed=0)
    other, _ = paper_split(omniglot_data, seed=1)
    np.testing.assert_array_equal(train, again)
    assert _character_keys(other) != train_keys
    # Drawn across all alphabets, not from the background set alone.
    assert 0 < len(train_keys & _character_keys(omniglot_data.images[964:])) < 659
    with pytest.raises(ValueError, match="n_train"):
        paper_split(omniglot_data, n_train=1623)


def test_background_split(omniglot_data: OmniglotData) -> None:
    background, evaluation = background_split(omniglot_data)
    assert background.shape == (964, 20, 28, 28) and evaluation.shape == (659, 20, 28, 28)
    np.testing.assert_array_equal(background, omniglot_data.images[:964])


def test_omniglot_second_load_hits_cache(
    omniglot_data: OmniglotData,
    omniglot_dir: Path,
    omniglot_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [path.name for path in omniglot_cache_dir.iterdir()] == ["omniglot_28px.npz"]

    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot, "_decode", fail)
    cached = load_omniglot(omniglot_dir, cache_dir=omniglot_cache_dir)
    np.testing.assert_array_equal(cached.images, omniglot_data.images)
    assert cached.alphabets == omniglot_data.alphabets
    np.testing.assert_array_equal(cached.background, omniglot_data.background)


# --- Omniglot loader on a miniature copy ----------------------------------------------------


@pytest.fixture
def fake_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the loader expect the miniature character counts of ``FAKE_CHARACTERS``."""
    for split, count in FAKE_CHARACTERS.items():
        monkeypatch.setitem(omniglot.N_CHARACTERS, split, count)


def _fake_members(split: str) -> dict[str, bytes]:
    """PNGs of a miniature split: black squares on white, one position per drawing."""
    members = {}
    for c in range(FAKE_CHARACTERS[split]):
        for d in range(20):
            image = Image.new("1", (105, 105), 1)
            left, top = 20 + 3 * d, 10 + 15 * c + 45 * (split == "evaluation")
            ImageDraw.Draw(image).rectangle((left, top, left + 12, top + 12), fill=0)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            name = f"images_{split}/Alphabet_{c % 2}/character{c + 1:02d}/{c:04d}_{d + 1:02d}.png"
            members[name] = buffer.getvalue()
    return members


def _write_fake_omniglot(root: Path, as_zip: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in FAKE_CHARACTERS:
        members = _fake_members(split)
        if as_zip:
            with zipfile.ZipFile(root / f"images_{split}.zip", "w") as archive:
                for name, data in members.items():
                    archive.writestr(name, data)
        else:
            for name, data in members.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_zip_and_folder_agree(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path / "zips", as_zip=True)
    _write_fake_omniglot(tmp_path / "folders", as_zip=False)
    from_zip = load_omniglot(tmp_path / "zips", cache_dir=tmp_path / "cache_zip", image_size=14)
    from_folder = load_omniglot(tmp_path / "folders", cache_dir=tmp_path / "cache_dir")
    assert from_zip.images.shape == (5, 20, 14, 14)
    assert from_folder.images.shape == (5, 20, 28, 28)
    # Sorted by split, then alphabet, then character folder.
    alphabets = ["Alphabet_0", "Alphabet_0", "Alphabet_1", "Alphabet_0", "Alphabet_1"]
    assert from_zip.alphabets == from_folder.alphabets == alphabets
    assert from_zip.background.tolist() == [True] * 3 + [False] * 2
    ink = from_folder.images[0, 0]
    assert ink.max() == 255 and ink[0, 0] == 0 and ink.mean() < 64
    # The default cache lives in a writable root.
    assert not (tmp_path / "folders" / "omniglot_28px.npz").exists()
    load_omniglot(tmp_path / "folders")
    assert (tmp_path / "folders" / "omniglot_28px.npz").is_file()


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "omniglot_28px.npz").write_bytes(b"not an npz")
    data = load_omniglot(tmp_path, cache_dir=cache)
    assert data.images.shape == (5, 20, 28, 28)
    assert [path.name for path in cache.iterdir()] == ["omniglot_28px.npz"]
    np.testing.assert_array_equal(load_omniglot(tmp_path, cache_dir=cache).images, data.images)


def test_omniglot_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(OmniglotNotFoundError) as raised:
        load_omniglot(tmp_path / "absent", cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    for expected in ("images_background.zip", "images_evaluation/", "absent", "download_omniglot"):
        assert expected in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_missing_split_is_named(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=True)
    (tmp_path / "images_evaluation.zip").unlink()
    with pytest.raises(OmniglotNotFoundError, match="expected images_evaluation.zip or") as raised:
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache")
    assert "images_background" not in str(raised.value)


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_corrupt_zip(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=True)
    (tmp_path / "images_background.zip").write_bytes(b"garbage")
    with pytest.raises(OmniglotCorruptError, match="images_background.zip is not a readable zip"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_incomplete_folder(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=False)
    next((tmp_path / "images_evaluation").rglob("*.png")).unlink()
    with pytest.raises(OmniglotCorruptError, match=r"found 2 characters \(1 complete\)"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.usefixtures("fake_layout")
def test_omniglot_undecodable_png(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=False)
    broken = sorted((tmp_path / "images_background").rglob("*.png"))[5]
    broken.write_bytes(b"not a png")
    with pytest.raises(OmniglotCorruptError, match=f"cannot read .*{broken.name}"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache")


def test_omniglot_wrong_layout_without_fake_counts(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path, as_zip=True)
    with pytest.raises(OmniglotCorruptError, match="expected 964 characters"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache")


# --- Download from a local HTTP server ----------------------------------------------------


@contextmanager
def _serve(directory: Path, handler: type = SimpleHTTPRequestHandler) -> Iterator[tuple[str, list]]:
    """Serves ``directory`` on 127.0.0.1; yields the base URL and the list of requested paths."""
    requests: list[str] = []

    class Handler(handler):
        def log_message(self, *args: object) -> None:
            requests.append(self.path)

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_shared_zips(omniglot_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "downloaded"
    with _serve(omniglot_dir) as (url, requests):
        paths = download_omniglot(target, base_url=url, progress=False, sha256=SHARED_SHA256)
        assert [path.name for path in paths] == ["images_background.zip", "images_evaluation.zip"]
        for path in paths:
            assert path.read_bytes() == (omniglot_dir / path.name).read_bytes()
            assert path.stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in paths)
        assert len(requests) == 2
        download_omniglot(target, base_url=url, progress=False)
        assert len(requests) == 2, "valid zips already present must not be fetched again"


def test_download_rejects_wrong_sha256(omniglot_dir: Path, tmp_path: Path) -> None:
    wrong = {"images_background.zip": hashlib.sha256(b"other").hexdigest()}
    with _serve(omniglot_dir) as (url, _):
        with pytest.raises(OmniglotCorruptError, match="sha256"):
            download_omniglot(tmp_path, base_url=url, progress=False, sha256=wrong)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("fake_layout")
def test_download_replaces_corrupt_existing_zip(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path / "server", as_zip=True)
    target = tmp_path / "target"
    target.mkdir()
    (target / "images_background.zip").write_bytes(b"half a zip")
    with _serve(tmp_path / "server") as (url, _):
        download_omniglot(target, base_url=url, progress=False)
    assert load_omniglot(target, cache_dir=tmp_path / "cache").images.shape == (5, 20, 28, 28)


@pytest.mark.usefixtures("fake_layout")
@pytest.mark.parametrize("damage", ["truncate", "garble", "wrong_layout"])
def test_download_bad_file_leaves_nothing(tmp_path: Path, damage: str) -> None:
    served = tmp_path / "server"
    _write_fake_omniglot(served, as_zip=True)
    archive = served / "images_background.zip"
    data = archive.read_bytes()
    if damage == "truncate":
        archive.write_bytes(data[: len(data) // 2])
    elif damage == "garble":  # central directory intact: only reading members notices
        middle = len(data) // 3
        archive.write_bytes(
            data[:middle]
            + bytes(b ^ 0xFF for b in data[middle : middle + 64])
            + data[middle + 64 :]
        )
    else:
        with zipfile.ZipFile(archive, "a") as handle:
            handle.writestr("images_background/Extra/character01/0001_01.png", b"")
    target = tmp_path / "target"
    with _serve(served) as (url, _), pytest.raises(OmniglotCorruptError):
        download_omniglot(target, base_url=url, progress=False)
    assert list(target.iterdir()) == []


class _CutShortHandler(SimpleHTTPRequestHandler):
    """Announces 1000 bytes but sends 10, then closes the connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"PK" + bytes(8))
        self.close_connection = True


def test_download_cut_short_leaves_nothing(tmp_path: Path) -> None:
    with (
        _serve(tmp_path, _CutShortHandler) as (url, _),
        pytest.raises(ConnectionError, match="10 of 1000 bytes"),
    ):
        download_omniglot(tmp_path / "target", base_url=url, progress=False)
    assert list((tmp_path / "target").iterdir()) == []


def test_download_http_error_leaves_nothing(tmp_path: Path) -> None:
    with _serve(tmp_path / "empty") as (url, _), pytest.raises(urllib.error.HTTPError):
        download_omniglot(tmp_path / "target", base_url=url, progress=False)
    assert list((tmp_path / "target").iterdir()) == []

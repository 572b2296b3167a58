"""The Omniglot data set: loading, caching, the benchmark's class splits and explicit download.

Omniglot (Lake et al., 2015) has 1623 handwritten characters from 50 alphabets, each drawn
once by 20 people, split into ``images_background`` (964 characters) and
``images_evaluation`` (659). The 105x105 PNGs are decoded and resized once, then cached as a
single ``.npz`` file so later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

DEFAULT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
SPLITS = ("background", "evaluation")
N_CHARACTERS = {"background": 964, "evaluation": 659}
DRAWINGS_PER_CHARACTER = 20

# Errors that mean a file exists but cannot be read as Omniglot.
_UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


class OmniglotNotFoundError(FileNotFoundError):
    """Raised when neither the zip nor the unpacked folder of a split is found."""


class OmniglotCorruptError(ValueError):
    """Raised when Omniglot files exist but do not hold the expected, readable layout."""


@dataclass
class OmniglotData:
    """All Omniglot characters, ``images_background`` first.

    Attributes:
        images: uint8 array ``[1623, 20, S, S]``, ink 255 and background 0; characters are
            sorted by split, alphabet and character folder, drawings by file name.
        alphabets: The alphabet of each character.
        background: bool array ``[1623]``, True for characters of ``images_background``.
    """

    images: np.ndarray
    alphabets: list[str]
    background: np.ndarray


def load_omniglot(
    root: str | Path, cache_dir: str | Path | None = None, image_size: int = 28
) -> OmniglotData:
    """Loads Omniglot from ``root``, decoding the PNGs on the first call only.

    ``root`` must hold, for each split, ``images_<split>.zip`` or the unpacked folder
    ``images_<split>/`` (the zip is used when both exist). Images are inverted so ink is high
    and resized with Lanczos filtering, the preprocessing of the original MAML code, from
    which the paper's 28x28 images come.

    Args:
        root: Directory holding the data set.
        cache_dir: Where to keep the decoded ``omniglot_<S>px.npz``. Defaults to ``root`` if
            writable, else ``~/.cache/rlmaml/omniglot``.
        image_size: Side ``S`` of the square images after resizing.

    Returns:
        The decoded data set.

    Raises:
        OmniglotNotFoundError: If a split is missing from ``root``.
        OmniglotCorruptError: If a split does not hold 20 readable drawings of each of its
            characters.
        ValueError: If ``image_size < 1``.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    root = Path(root).expanduser()
    sources = _find_sources(root)
    if cache_dir is None:
        writable = os.access(root, os.W_OK)
        cache_dir = root if writable else Path.home() / ".cache" / "rlmaml" / "omniglot"
    cache_file = Path(cache_dir).expanduser() / f"omniglot_{image_size}px.npz"
    data = _read_cache(cache_file, image_size)
    if data is None:
        data = _decode(sources, image_size)
        _write_cache(cache_file, data)
    return data


def paper_split(
    data: OmniglotData, n_train: int = 1200, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Splits the characters at random into meta-training and meta-test sets.

    This is the split of the MAML paper (after Santoro et al., 2016): characters are drawn
    across all alphabets regardless of the background/evaluation division.

    Args:
        data: The loaded data set.
        n_train: Number of meta-training characters.
        seed: Seed of the split; the same seed gives the same split.

    Returns:
        ``(train_images, test_images)``, each ``[n_characters, 20, S, S]``.

    Raises:
        ValueError: If either side of the split would be empty.
    """
    n_characters = len(data.images)
    if not 0 < n_train < n_characters:
        raise ValueError(f"n_train must be in [1, {n_characters - 1}], got {n_train}")
    order = np.random.default_rng(seed).permutation(n_characters)
    return data.images[np.sort(order[:n_train])], data.images[np.sort(order[n_train:])]


def background_split(data: OmniglotData) -> tuple[np.ndarray, np.ndarray]:
    """Splits the characters by the data set's own division, whose alphabets are disjoint.

    Args:
        data: The loaded data set.

    Returns:
        ``(background_images, evaluation_images)`` with 964 and 659 characters.
    """
    return data.images[data.background], data.images[~data.background]


def download_omniglot(
    root: str | Path,
    base_url: str = DEFAULT_URL,
    progress: bool = True,
    sha256: dict[str, str] | None = None,
) -> list[Path]:
    """Downloads ``images_background.zip`` and ``images_evaluation.zip`` into ``root``.

    Nothing else in this package downloads. Each zip is written to a temporary file next to
    its destination and renamed only once it is a valid zip with the expected character
    layout and intact members, so an interrupted or bad download never leaves a file that
    looks complete. A zip already in ``root`` that passes the same checks is kept.

    Args:
        root: Directory to download into; created if missing.
        base_url: URL of the folder holding the two zips.
        progress: Whether to show a progress bar per file.
        sha256: Optional expected hex digests by file name, e.g.
            ``{"images_background.zip": "..."}``, checked in addition to the layout.

    Returns:
        The paths of the two zips.

    Raises:
        OmniglotCorruptError: If a downloaded file fails verification.
        OSError: If the download fails or is cut short (``urllib.error.URLError`` and
            ``ConnectionError`` are subclasses).
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in SPLITS:
        name = f"images_{split}.zip"
        destination = root / name
        digest = (sha256 or {}).get(name)
        paths.append(destination)
        if destination.is_file():
            try:
                _verify_zip(destination, split, digest, where=str(destination))
                continue
            except OmniglotCorruptError:
                pass  # replaced by a fresh download below
        url = f"{base_url.rstrip('/')}/{name}"
        with _atomic_file(destination) as (file, temp_path):
            _fetch(url, file, progress, description=name)
            file.flush()
            _verify_zip(temp_path, split, digest, where=url)
    return paths


def _find_sources(root: Path) -> dict[str, Path]:
    """Returns the zip or folder to read for each split, raising if any split is missing."""
    sources, missing = {}, []
    for split in SPLITS:
        archive, folder = root / f"images_{split}.zip", root / f"images_{split}"
        if archive.is_file():
            sources[split] = archive
        elif folder.is_dir():
            sources[split] = folder
        else:
            missing.append(f"{archive.name} or {folder.name}/")
    if missing:
        raise OmniglotNotFoundError(
            f"Omniglot not found: expected {' and '.join(missing)} in {root}. Fetch the zips "
            f"with rlmaml.supervised.download_omniglot({str(root)!r}) or copy them there."
        )
    return sources


@contextmanager
def _open_source(source: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """Yields the member names of a split's zip or folder, relative to ``root``, and a reader."""
    if source.is_dir():
        names = [path.relative_to(source.parent).as_posix() for path in source.rglob("*.png")]
        yield names, lambda name: (source.parent / name).read_bytes()
        return
    try:
        archive = zipfile.ZipFile(source)
    except _UNREADABLE as error:
        raise OmniglotCorruptError(f"{source} is not a readable zip file: {error}") from error
    with archive:
        yield archive.namelist(), archive.read


def _group_characters(names: list[str], split: str, where: str) -> list[tuple[str, list[str]]]:
    """Groups PNG paths ``images_<split>/<Alphabet>/<character>/<file>.png`` by character.

    Other entries (folders, stray files) are ignored. The layout is checked: the split must
    have its known number of characters with 20 drawings each.

    Returns:
        ``(alphabet, sorted drawing paths)`` per character, sorted by alphabet and character.
    """
    characters: dict[tuple[str, str], list[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == f"images_{split}" and parts[3].endswith(".png"):
            characters.setdefault((parts[1], parts[2]), []).append(name)
    complete = sum(len(files) == DRAWINGS_PER_CHARACTER for files in characters.values())
    if len(characters) != N_CHARACTERS[split] or complete != len(characters):
        raise OmniglotCorruptError(
            f"{where}: expected {N_CHARACTERS[split]} characters with {DRAWINGS_PER_CHARACTER} "
            f"drawings each as images_{split}/<Alphabet>/<character>/<drawing>.png, found "
            f"{len(characters)} characters ({complete} complete). Replace the files, e.g. "
            "with rlmaml.supervised.download_omniglot."
        )
    return [
        (alphabet, sorted(characters[alphabet, character]))
        for alphabet, character in sorted(characters)
    ]


def _decode(sources: dict[str, Path], image_size: int) -> OmniglotData:
    """Decodes both splits into one ``OmniglotData``."""
    images, alphabets, background = [], [], []
    for split in SPLITS:
        with _open_source(sources[split]) as (names, read):
            characters = _group_characters(names, split, where=str(sources[split]))
            split_images = np.empty(
                (len(characters), DRAWINGS_PER_CHARACTER, image_size, image_size), np.uint8
            )
            for i, (alphabet, files) in enumerate(characters):
                for j, name in enumerate(files):
                    try:
                        split_images[i, j] = _decode_png(read(name), image_size)
                    except _UNREADABLE as error:
                        raise OmniglotCorruptError(
                            f"{sources[split]}: cannot read {name}: {error}"
                        ) from error
                alphabets.append(alphabet)
        images.append(split_images)
        background.append(np.full(len(characters), split == "background"))
    return OmniglotData(np.concatenate(images), alphabets, np.concatenate(background))


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """Decodes one drawing (black ink on white) into a uint8 image with ink 255."""
    with Image.open(io.BytesIO(data)) as image:
        ink = ImageOps.invert(image.convert("L"))
    return np.asarray(ink.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _read_cache(path: Path, image_size: int) -> OmniglotData | None:
    """Returns the cached data set, or None if the cache is absent, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            data = OmniglotData(
                archive["images"], archive["alphabets"].tolist(), archive["background"]
            )
    except (*_UNREADABLE, KeyError, ValueError):
        return None
    expected = (sum(N_CHARACTERS.values()), DRAWINGS_PER_CHARACTER, image_size, image_size)
    return data if data.images.shape == expected else None


def _write_cache(path: Path, data: OmniglotData) -> None:
    """Writes the cache atomically; a failure only warns, since the cache is an optimisation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(path) as (file, _):
            np.savez(
                file,
                images=data.images,
                alphabets=np.array(data.alphabets),
                background=data.background,
            )
    except OSError as error:
        warnings.warn(f"could not write the Omniglot cache {path}: {error}", stacklevel=3)


@contextmanager
def _atomic_file(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Yields a temporary file next to ``path`` that replaces ``path`` only on success.

    On any exception, including one raised by the caller inside the block, the temporary file
    is removed, so no partly written file is ever left behind.
    """
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    temp_path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file, temp_path
        temp_path.chmod(0o644)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _fetch(url: str, file: BinaryIO, progress: bool, description: str) -> None:
    """Streams ``url`` into ``file``, raising ``ConnectionError`` if the body is cut short."""
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length", 0)) or None
        received = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=description,
            disable=not progress,
        ) as bar:
            while chunk := response.read(1 << 16):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"{url}: connection closed after {received} of {total} bytes")


def _verify_zip(path: Path, split: str, sha256: str | None, where: str) -> None:
    """Checks that ``path`` is an intact Omniglot zip of ``split`` (and has ``sha256``, if given).

    Raises:
        OmniglotCorruptError: Naming ``where`` (the file or URL) and what failed.
    """
    if sha256 is not None:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        if digest != sha256.lower():
            raise OmniglotCorruptError(f"{where}: sha256 is {digest}, expected {sha256}")
    try:
        with zipfile.ZipFile(path) as archive:
            _group_characters(archive.namelist(), split, where)
            damaged = archive.testzip()
    except _UNREADABLE as error:
        raise OmniglotCorruptError(f"{where}: not a readable zip file: {error}") from error
    if damaged is not None:
        raise OmniglotCorruptError(f"{where}: member {damaged} fails its CRC check")

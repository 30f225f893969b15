"""Where source images come from: folders, zip archives and tar archives.

A source is an iterable of `SourceItem`s in a stable order. Each item carries
the output path it will be written to (so a resumed run can skip it without
reading anything) and a payload that a worker process turns into a PIL image.
Payloads must be picklable; those that can only be read in the parent process
(members of a tar stream) are turned into bytes by `materialize()` first.
"""

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from guided_diffusion.image_ops import decode_image, is_image_file

class DatasetSourceError(ValueError):
    """The source exists but is not in a form this dataset can be prepared from."""


def is_image_name(name):
    """True for image files of an archive or folder, excluding macOS resource forks."""
    return "__MACOSX" not in PurePosixPath(name).parts and is_image_file(PurePosixPath(name).name)


@dataclass(frozen=True)
class SourceItem:
    out_name: str  # output path relative to the output folder, always ending in .png
    origin: str  # how the user finds this image in their source, used in reports
    payload: object


@dataclass(frozen=True)
class FilePayload:
    path: str

    def materialize(self):
        return self

    def open_image(self):
        with open(self.path, "rb") as f:
            return decode_image(f.read(), self.path)


# A worker reads many members of the same archive; reopening it per image would
# re-parse the zip directory every time.
_open_zip_files = {}


@dataclass(frozen=True)
class ZipMemberPayload:
    zip_path: str
    member: str

    def materialize(self):
        return self

    def open_image(self):
        archive = _open_zip_files.get(self.zip_path)
        if archive is None:
            archive = _open_zip_files[self.zip_path] = zipfile.ZipFile(self.zip_path)
        return decode_image(archive.read(self.member), f"{self.zip_path}:{self.member}")


def close_cached_archives():
    while _open_zip_files:
        _, archive = _open_zip_files.popitem()
        archive.close()


@dataclass(frozen=True)
class BytesPayload:
    data: bytes

    def materialize(self):
        return self

    def open_image(self):
        return decode_image(self.data, "archive member")


@dataclass(frozen=True)
class ArrayPayload:
    """An already decoded uint8 HWC RGB array (CIFAR-10 ships raw pixels)."""

    pixels: np.ndarray

    def materialize(self):
        return self

    def open_image(self):
        return Image.fromarray(self.pixels)


class TarMemberPayload:
    """A member of an open tar stream; readable only in the parent, while the tar is open."""

    def __init__(self, archive, member, origin):
        self._archive = archive
        self._member = member
        self._origin = origin

    def materialize(self):
        try:
            handle = self._archive.extractfile(self._member)
            data = handle.read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DatasetSourceError(f"cannot read {self._origin}: {error}") from error
        return BytesPayload(data)


def output_name_for(stem, subdir=None):
    name = f"{stem}.png"
    return f"{subdir}/{name}" if subdir else name


def check_unique_output_names(items):
    owner = {}
    for item in items:
        if item.out_name in owner:
            raise DatasetSourceError(
                f"two source images map to the same output {item.out_name}: "
                f"{owner[item.out_name]} and {item.origin}"
            )
        owner[item.out_name] = item.origin


class ListedSource:
    """A source whose items are all known up front (folders, zip archives)."""

    def __init__(self, description, items):
        check_unique_output_names(items)
        self.description = description
        self._items = items

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)


def _path_contains(parts, subtree_parts):
    width = len(subtree_parts)
    return any(tuple(parts[i : i + width]) == subtree_parts for i in range(len(parts) - width + 1))


def list_folder_images(root):
    """Relative POSIX paths of all images under `root`, recursively, sorted."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        relative_dir = Path(directory).relative_to(root)
        for file_name in files:
            relative = (relative_dir / file_name).as_posix()
            if is_image_name(relative):
                found.append(relative)
    return sorted(found)


def _find_subtree_folder(root, subtree):
    """`root` itself if it ends in `subtree`, else `root/subtree` or `root/*/subtree`."""
    subtree_parts = PurePosixPath(subtree).parts
    if root.resolve().parts[-len(subtree_parts) :] == subtree_parts:
        return root
    if (root / subtree).is_dir():
        return root / subtree
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / subtree).is_dir():
            return child / subtree
    return None


def folder_source(root, subtree=None, subtree_required=False):
    root = Path(root)
    if subtree:
        found = _find_subtree_folder(root, subtree)
        if found is None and subtree_required:
            raise DatasetSourceError(f"no {subtree}/ folder in {root}")
        root = found or root
    items = [
        SourceItem(
            out_name=output_name_for(PurePosixPath(relative).stem),
            origin=str(root / relative),
            payload=FilePayload(str(root / relative)),
        )
        for relative in list_folder_images(root)
    ]
    return ListedSource(str(root.resolve()), items)


def _select_members(names, subtree, subtree_required, archive_path):
    images = sorted(name for name in names if is_image_name(name))
    if not subtree:
        return images
    subtree_parts = PurePosixPath(subtree).parts
    selected = [n for n in images if _path_contains(PurePosixPath(n).parent.parts, subtree_parts)]
    if not selected and subtree_required:
        raise DatasetSourceError(f"no images under {subtree}/ in {archive_path}")
    return selected or images


def zip_source(zip_path, subtree=None, subtree_required=False):
    zip_path = str(Path(zip_path).resolve())
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetSourceError(f"cannot read zip archive {zip_path}: {error}") from error
    members = _select_members(names, subtree, subtree_required, zip_path)
    items = [
        SourceItem(
            out_name=output_name_for(PurePosixPath(member).stem),
            origin=f"{zip_path}:{member}",
            payload=ZipMemberPayload(zip_path, member),
        )
        for member in members
    ]
    return ListedSource(zip_path, items)


def open_tar(path_or_fileobj, origin):
    try:
        if isinstance(path_or_fileobj, (str, Path)):
            return tarfile.open(path_or_fileobj, mode="r:*")
        return tarfile.open(fileobj=path_or_fileobj, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetSourceError(f"cannot read tar archive {origin}: {error}") from error


def iter_tar_members(archive, origin):
    """Regular-file members of an open tar, in archive order."""
    try:
        for member in archive:
            if member.isfile():
                yield member
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetSourceError(f"cannot read tar archive {origin}: {error}") from error


class TarImageSource:
    """Images inside a (possibly compressed) tar, streamed in archive order."""

    def __init__(self, tar_path, subtree=None, subtree_required=False):
        self.description = str(Path(tar_path).resolve())
        self._tar_path = self.description
        with open_tar(self._tar_path, self._tar_path) as archive:
            names = [m.name for m in iter_tar_members(archive, self._tar_path)]
        self._members = set(_select_members(names, subtree, subtree_required, self._tar_path))
        check_unique_output_names(
            [SourceItem(output_name_for(PurePosixPath(n).stem), n, None) for n in self._members]
        )

    def __len__(self):
        return len(self._members)

    def __iter__(self):
        with open_tar(self._tar_path, self._tar_path) as archive:
            for member in iter_tar_members(archive, self._tar_path):
                if member.name in self._members:
                    origin = f"{self._tar_path}:{member.name}"
                    yield SourceItem(
                        out_name=output_name_for(PurePosixPath(member.name).stem),
                        origin=origin,
                        payload=TarMemberPayload(archive, member, origin),
                    )


def image_collection_source(path, subtree=None, subtree_required=False):
    """A folder, zip or tar of images; `subtree` (e.g. "train/dog") narrows it when present."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    if path.is_dir():
        return folder_source(path, subtree, subtree_required)
    if zipfile.is_zipfile(path):
        return zip_source(path, subtree, subtree_required)
    if tarfile.is_tarfile(path):
        return TarImageSource(path, subtree, subtree_required)
    raise DatasetSourceError(
        f"unrecognised source format: {path} (expected a folder of images, a .zip or a .tar archive)"
    )

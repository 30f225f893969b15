"""ImageNet ILSVRC2012 training set: 1,281,167 images in 1,000 classes, class-conditional.

Accepts, as users get it:
- the extracted train folder with one sub-folder per synset (n01440764/ ...);
- a folder of the 1,000 per-class tars (n01440764.tar ...), possibly mixed
  with extracted folders (a folder wins over a tar of the same synset);
- ILSVRC2012_img_train.tar itself, the outer tar holding the per-class tars;
- a single per-class tar, named after its synset.

Outputs go to one sub-folder per synset and are named after the source file,
which in ILSVRC2012 already starts with the WNID (n01440764_10026.JPEG ->
n01440764/n01440764_10026.png); a file that does not is prefixed with it. ADM's
class rule then labels each image with its WNID, and sorting WNIDs gives the
standard 0..999 label order.
"""

import re
import tarfile
from pathlib import Path, PurePosixPath

from datasets.common import DatasetSpec
from datasets.sources import (
    DatasetSourceError,
    FilePayload,
    SourceItem,
    TarMemberPayload,
    is_image_name,
    iter_tar_members,
    list_folder_images,
    open_tar,
)

WNID_PATTERN = re.compile(r"n\d{8}")


def is_wnid(name):
    return WNID_PATTERN.fullmatch(name) is not None


def output_name(wnid, source_name):
    stem = PurePosixPath(source_name).stem
    if not stem.startswith(f"{wnid}_"):
        stem = f"{wnid}_{stem}"
    return f"{wnid}/{stem}.png"


class ImageNetSource:
    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {path}")
        self.description = str(path.resolve())
        self._path = path
        if path.is_dir():
            self._folders = {p.name: p for p in path.iterdir() if p.is_dir() and is_wnid(p.name)}
            self._tars = {
                p.stem: p
                for p in path.iterdir()
                if p.is_file() and p.suffix == ".tar" and is_wnid(p.stem) and p.stem not in self._folders
            }
            if not self._folders and not self._tars:
                raise DatasetSourceError(
                    f"no synset folders (n01440764/) or per-class tars (n01440764.tar) in {path}"
                )
        elif tarfile.is_tarfile(path):
            self._folders, self._tars = {}, {}
        else:
            raise DatasetSourceError(
                f"unrecognised source format: {path} (expected the ILSVRC2012 train folder, "
                f"a folder of per-class tars, or ILSVRC2012_img_train.tar)"
            )

    def __iter__(self):
        if self._path.is_dir():
            for wnid in sorted(self._folders.keys() | self._tars.keys()):
                if wnid in self._folders:
                    yield from self._iter_folder(wnid, self._folders[wnid])
                else:
                    with open_tar(self._tars[wnid], str(self._tars[wnid])) as archive:
                        yield from self._iter_tar(archive, str(self._tars[wnid]), wnid)
        else:
            with open_tar(self._path, str(self._path)) as archive:
                class_of_file = self._path.stem if is_wnid(self._path.stem) else None
                yield from self._iter_tar(archive, str(self._path), class_of_file)

    @staticmethod
    def _iter_folder(wnid, folder):
        for relative in list_folder_images(folder):
            yield SourceItem(
                out_name=output_name(wnid, relative),
                origin=str(folder / relative),
                payload=FilePayload(str(folder / relative)),
            )

    def _iter_tar(self, archive, origin, wnid_of_archive):
        """Images of a tar: per-class tars inside it, synset/image members, or images of one class."""
        for member in iter_tar_members(archive, origin):
            member_path = PurePosixPath(member.name)
            member_origin = f"{origin}:{member.name}"
            if member_path.suffix == ".tar" and is_wnid(member_path.stem):
                inner = open_tar(archive.extractfile(member), member_origin)
                with inner:
                    yield from self._iter_tar(inner, member_origin, member_path.stem)
            elif is_image_name(member.name):
                parent = member_path.parent.name
                wnid = parent if is_wnid(parent) else wnid_of_archive
                if wnid is None:
                    raise DatasetSourceError(
                        f"cannot tell the class of {member_origin}: neither its folder nor its tar is a WNID"
                    )
                yield SourceItem(
                    out_name=output_name(wnid, member.name),
                    origin=member_origin,
                    payload=TarMemberPayload(archive, member, member_origin),
                )


SPEC = DatasetSpec(
    name="imagenet",
    expected_count=1_281_167,
    default_image_size=256,
    class_cond=True,
    open_source=ImageNetSource,
    about="ImageNet ILSVRC2012 train, 1,281,167 images in 1,000 classes (folder, per-class tars, or the train tar)",
)

"""What a local studies folder serves, said when the server starts.

MONAI Label's local datastore lists only the image files at the top of the studies folder (NIfTI, NRRD, ...) and never
reads DICOM (and ``start_server`` creates a missing folder empty). So a CD's DICOM folder, a folder whose images lie
one level down or a mistyped path start a server that lists no image, and 3D Slicer shows an empty list without a
word; a file given as the folder fails with MONAI Label's traceback. :func:`studies_problem` names the file case
(the app stops), and :func:`studies_notes` the empty cases (the server starts, with a warning saying why the list is
empty and what to do).
No MONAI Label import: unit-testable.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from monai_probunet.dicom_series import is_dicom

__all__ = ["studies_notes", "studies_problem"]

#: files looked at below a studies folder that lists no image, at most (a PACS export can hold millions)
MAX_SCANNED = 20000
#: folders of the datastore's own (its labels), not the user's images
DATASTORE_FOLDERS = ("labels",)


def is_url(studies: str) -> bool:
    return studies.startswith(("http://", "https://"))


def studies_problem(studies: str) -> str | None:
    """Why the server cannot start on ``studies`` (a file, not a folder or a DICOMweb URL), or ``None``."""
    if is_url(studies) or not os.path.exists(studies) or os.path.isdir(studies):
        return None
    return (f"--studies {studies} is a file: give a folder of images (NIfTI or NRRD) or a DICOMweb server's URL "
            "(http://HOST:8042/dicom-web).")


def studies_notes(studies: str, num_images: int, extensions: Sequence[str]) -> list[str]:
    """Why a local studies folder lists no image, and what to do: one line each; none where it lists some.

    Args:
        studies: the studies folder.
        num_images: the images the datastore lists.
        extensions: the datastore's file patterns (``*.nii.gz``, ...).

    Returns:
        Warning lines: a folder holding DICOM files (not served from a folder), one whose images lie in subfolders,
        an empty one.
    """
    if is_url(studies) or num_images > 0:
        return []
    dicom, nested, folders = 0, 0, set()
    for path in _files_below(Path(studies)):
        if any(fnmatch.fnmatch(path.name, ext) for ext in extensions):
            nested += 1
        elif is_dicom(path):
            dicom += 1
            folders.add(path.parent)
    if dicom:
        return [(f"studies folder {studies} lists no image: a local studies folder serves NIfTI and NRRD files, not "
                 f"DICOM, and it holds {dicom} DICOM file(s) in {len(folders)} folder(s). Serve DICOM from a DICOMweb "
                 "server: upload the files to Orthanc and start with --studies http://127.0.0.1:8042/dicom-web "
                 "(apps/monailabel/README.md).")]
    if nested:
        return [(f"studies folder {studies} lists no image: {nested} image file(s) lie in its subfolders, and only "
                 "those at its top level are served; give the folder that holds them.")]
    return [(f"studies folder {studies} holds no image (NIfTI or NRRD at its top level): 3D Slicer lists none until "
             "images are copied into it (they are listed while the server runs); check the path.")]


def _files_below(root: Path):
    """The files below ``root`` other than the datastore's own, at most :data:`MAX_SCANNED`."""
    seen = 0
    for folder, subfolders, files in os.walk(root):
        if Path(folder) == root:
            subfolders[:] = [d for d in subfolders if d not in DATASTORE_FOLDERS and not d.startswith(".")]
        for name in files:
            if seen >= MAX_SCANNED:
                return
            seen += 1
            yield Path(folder) / name

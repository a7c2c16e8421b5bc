"""A DICOMweb datastore whose submitted (final) labels are stored as DICOM SEG written with highdicom.

MONAI Label 0.8.5's ``DICOMWebDatastore.save_label`` converts a final label with dcmqi's ``itkimage2segimage``
(downloaded from GitHub at start). :class:`SegDICOMWebDatastore` writes the SEG with
:func:`lib.infers.dicom_seg.write_dicom_seg` instead (no download, no external tool) and uploads it with STOW-RS;
everything else is MONAI Label's datastore. What 3D Slicer's "Submit Label" sends: ``PUT
/datastore/label?image=<SeriesInstanceUID>`` with the labelmap (values 1..N) and ``params`` =
``{"label_info": [{"name": <segment name>, "idx": <value>}, ...], ...}``. The submitter's Client/User-ID (or
``rater``) becomes the SEG's ``ContentCreatorName`` (3D Slicer's default ``user-xyz``, everyone's who has not set
one, is refused with 400, as on a local studies folder). A series is fetched in the transfer syntax it is stored in
(a JPEG 2000 series opens without the server transcoding it).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Dict

import numpy as np

try:  # Intel ISA-L's gzip (the [label] extra): standard gzip files, about 5x as fast as zlib at level 1
    from isal import igzip as gzip
except ImportError:  # a venv built before the extra had it
    import gzip
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.infers.dicom_seg import DicomSegError, write_dicom_seg
from lib.rater_datastore import check_label_shape, nrrd_layers, rater_name

logger = logging.getLogger(__name__)

#: seconds for which an answer of the DICOMweb server is taken to mean it is up (``answer_problem``)
ANSWER_KEPT_S = 30.0
#: WADO-RS media type for "each instance in the transfer syntax it is stored in" (no transcoding by the server)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)

__all__ = ["SegDICOMWebDatastore", "label_segments"]


def label_segments(label: np.ndarray, label_info: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Split a labelmap into one 0/1 layer per label value, named from ``label_info``.

    Parameters
    ----------
    label : numpy.ndarray
        ``I x J x K`` integer labelmap.
    label_info : list of dict or None
        ``[{"name": ..., "idx" (or "id"): value}, ...]`` as 3D Slicer sends it; values without an entry are named
        ``label <value>``.

    Returns
    -------
    tuple
        ``(L x I x J x K uint8 layers, L segments {"name", "label_value"})``; one empty segment ``empty label`` if
        the labelmap holds no label.
    """
    names = {}
    for item in label_info or []:
        if isinstance(item, dict) and "name" in item:
            value = item.get("idx", item.get("id"))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names[int(value)] = str(item["name"])
    values = [int(v) for v in np.unique(label) if v != 0]
    if not values:
        return np.zeros((1,) + label.shape, np.uint8), [{"name": "empty label", "label_value": 1}]
    layers = np.stack([(label == v).astype(np.uint8) for v in values])
    return layers, [{"name": names.get(v, f"label {v}"), "label_value": v} for v in values]


class SegDICOMWebDatastore(DICOMWebDatastore):
    """:class:`~monailabel.datastore.dicom.DICOMWebDatastore` with a highdicom SEG for final labels.

    Also: an image id the server does not hold answers 404 (MONAI Label's datastore raises ``IndexError``: 500), a
    server that does not answer 502 at once (:meth:`answer_problem`; said at start too, and ``/info/`` still lists
    the models); a series whose label was submitted here counts as labelled at once (MONAI Label keeps the list of
    labelled series for ``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY`` seconds, 2 hours by default, so the next sample would
    offer the series just outlined again); a series read for the first time is returned as its cached NIfTI, and
    MONAI Label's temporary conversion is removed (left in the temporary folder, one per series, before).
    """

    def answer_problem(self, timeout: float = 5.0) -> str | None:
        """Why the DICOMweb server does not answer or refuses this app's credentials, or ``None`` where it answers
        (any other HTTP reply counts).

        dicomweb-client retries a request that fails for 30 s (five attempts, exponential back-off), also where
        nothing listens at the URL, and MONAI Label answers a server that refuses the credentials with 500 (``/info/``
        included): so each request of 3D Slicer is checked first by one request without retries, within ``timeout``
        seconds; an answer is remembered for :data:`ANSWER_KEPT_S` seconds.
        """
        import time

        import requests

        if time.monotonic() - self.__dict__.get("_answered_at", -ANSWER_KEPT_S) < ANSWER_KEPT_S:
            return None
        try:
            with self._client._session.get(self._client.base_url, timeout=timeout) as answer:
                status, reason = answer.status_code, answer.reason
        except requests.RequestException as e:
            errno = re.search(r"\[Errno -?\d+\] [^)'\"]+", str(e))  # urllib3 nests the socket's error in its message
            reason = errno.group(0).strip() if errno else f"{type(e).__name__}: {e}"
            return (f"the DICOMweb server {self._client.base_url} does not answer ({reason}); start it (Orthanc: "
                    "apps/monailabel/orthanc/start_orthanc.sh) or check --studies.")
        if status in (401, 403):  # every request would fail alike
            return (f"the DICOMweb server {self._client.base_url} refuses this app ({status} {reason}): give the user "
                    "and password it accepts in MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD.")
        self.__dict__["_answered_at"] = time.monotonic()
        return None

    def _check_answering(self) -> None:
        """Answer 502 at once where the DICOMweb server does not answer (:meth:`answer_problem`)."""
        problem = self.answer_problem()
        if problem is not None:
            raise HTTPException(status_code=502, detail=problem)

    def list_images(self) -> list[str]:
        self._check_answering()
        return super().list_images()

    def status(self) -> Dict[str, Any]:
        """The datastore's counts (part of ``/info/``, which 3D Slicer asks for on connecting): where the server does
        not answer, none, and ``problem`` saying why, so that the app's models are still listed."""
        problem = self.answer_problem()
        if problem is not None:
            return {"total": 0, "completed": 0, "label_tags": {}, "problem": problem}
        return super().status()

    @property
    def _submitted(self) -> set[str]:
        """The series whose label was submitted here (the app turns MONAI Label's datastore into this class after it
        is built, so the set starts on first use)."""
        return self.__dict__.setdefault("_submitted_series", set())

    def get_image_uri(self, image_id: str) -> str:
        import requests

        self._check_answering()
        try:
            self._download_as_stored(image_id)
            self._convert_to_cache(image_id)
            uri = super().get_image_uri(image_id)
        except requests.RequestException as e:
            raise HTTPException(status_code=502, detail=f"image {image_id!r}: the DICOMweb server did not answer "
                                f"({type(e).__name__}: {e}).") from None
        except IndexError:
            raise HTTPException(status_code=404, detail=f"unknown image {image_id!r}: the DICOMweb server holds no "
                                "series of that SeriesInstanceUID.") from None
        # where MONAI Label converts the series (fetched by frame), it does so into a temporary NIfTI, copies it into
        # its cache and returns the temporary file, which nothing removes: return the cached copy instead
        cached = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if (uri != cached and uri.endswith(".nii.gz") and os.path.isfile(uri) and os.path.isfile(cached)
                and os.path.dirname(os.path.realpath(uri)) == os.path.realpath(tempfile.gettempdir())
                and os.path.getsize(uri) == os.path.getsize(cached)):
            os.remove(uri)
            return cached
        return uri

    def _download_as_stored(self, series_id: str) -> None:
        """Fetch a series not yet in the cache in the transfer syntax it is stored in, into its cache folder, whole
        or not at all; MONAI Label then finds it there and converts it (SimpleITK's GDCM reads compressed DICOM).

        MONAI Label asks WADO-RS for the default transfer syntax (uncompressed), which makes the server transcode:
        Orthanc without its GDCM plugin cannot transcode JPEG 2000 and answers 500, so a series stored compressed,
        as PACS often store them, could not be opened. A server that refuses ``transfer-syntax=*`` (older than
        DICOMweb's 2019 edition) is asked again as MONAI Label asks. Its own download writes into the cache folder
        file by file, and an interrupted one left a partial series that was then read as the whole. The series is
        read as a stream (``iter_series``): ``retrieve_series`` decodes the multipart answer in one piece, 4 s of a
        200-slice 512 x 512 series that comes over the loopback in 0.2 s (``apps/monailabel/README.md``).
        """
        import requests

        folder = os.path.realpath(os.path.join(self._datastore.image_path(), series_id))
        if self._fetch_by_frame or (os.path.isdir(folder) and os.listdir(folder)):
            return
        found = [s for s in self._client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
                 if s.get("0020000E", {}).get("Value") == [series_id]]
        if not found:
            raise IndexError(series_id)  # answered 404 by get_image_uri, as MONAI Label's own lookup fails
        study_id = found[0]["0020000D"]["Value"][0]
        part = tempfile.mkdtemp(prefix=f".{series_id}.", dir=os.path.dirname(folder))

        def fetch(**media_types: Any) -> None:
            for ds in self._client.iter_series(study_id, series_id, **media_types):
                ds.save_as(os.path.join(part, f"{ds.SOPInstanceUID}.dcm"))

        try:
            try:
                fetch(media_types=ANY_TRANSFER_SYNTAX)
            except requests.HTTPError as e:
                if e.response is None or e.response.status_code not in (400, 406, 415):
                    raise
                fetch()
            try:
                os.replace(part, folder)  # also over an empty folder left by MONAI Label's failed download
            except OSError:
                if not os.listdir(folder):
                    raise  # else a request beside this one fetched the series first: its copy stays
        finally:
            if os.path.isdir(part):
                shutil.rmtree(part)

    def _convert_to_cache(self, series_id: str) -> None:
        """The cached series' NIfTI, made as MONAI Label makes it (SimpleITK's GDCM reader: the same voxels, geometry
        and header) but written uncompressed, then gzipped at level 1 (by ISA-L where installed), and recorded in the
        datastore as MONAI Label records it; MONAI Label then finds it there. SimpleITK's own ``.nii.gz`` writer took
        most of a large series' first open (``apps/monailabel/README.md``: the measurement)."""
        import SimpleITK as sitk

        folder = os.path.realpath(os.path.join(self._datastore.image_path(), series_id))
        cached = os.path.realpath(os.path.join(self._datastore.image_path(), f"{series_id}.nii.gz"))
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        if not self._convert_to_nifti or os.path.exists(cached) or not files:
            return
        if len(files) > 1:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        else:
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(os.path.join(folder, files[0]))
        work = tempfile.mkdtemp()
        try:
            raw, packed = os.path.join(work, "image.nii"), os.path.join(work, f"{series_id}.nii.gz")
            sitk.WriteImage(reader.Execute(), raw, False)
            with open(raw, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            LocalDatastore.add_image(self, series_id, packed, self._dicom_info(series_id))  # copies it into the cache
        finally:
            shutil.rmtree(work)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = list(super().get_labeled_images(label_tag, labels))
        return labelled + sorted(s for s in self._submitted if s not in labelled and s in self.list_images())

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = ""
    ) -> str:
        ext = "".join(pathlib.Path(label_filename).suffixes)
        if label_tag != DefaultLabelTag.FINAL or ext == ".bin":
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        import nibabel as nib
        from monai.transforms import LoadImage

        image_shape = nib.load(self.get_image_uri(image_id)).shape  # the series' files and its NIfTI in the cache
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        layers = nrrd_layers(label_filename)
        if layers is not None and layers > 1:
            check_label_shape((layers, *image_shape), image_shape)
        try:
            label = LoadImage(image_only=True)(label_filename)
        except Exception as e:  # noqa: BLE001 -- readers raise many types for a bad file
            raise HTTPException(status_code=422, detail=f"could not read the label file: {e}") from None
        arr = np.asarray(label)
        if arr.ndim == 2:
            arr = arr[..., None]
        check_label_shape(arr.shape, image_shape)
        layers, segments = label_segments(np.rint(arr).astype(np.int64), label_info.get("label_info"))
        # the person who submits (refused: 3D Slicer's default id, everyone's who has not set one); none given: none
        creator = rater_name(label_tag, label_info) if label_info.get("rater") or label_info.get("client_id") else None
        import pydicom

        fd, seg_file = tempfile.mkstemp(suffix=".dcm")
        os.close(fd)
        try:
            try:
                info = write_dicom_seg(seg_file, layers, np.asarray(label.affine, dtype=np.float64), segments,
                                       image_dir, series_description="MONAI Label final label",
                                       content_creator=creator)
            except DicomSegError as e:
                raise HTTPException(status_code=422, detail=f"DICOM SEG: {e}") from None
            self._client.store_instances(datasets=[pydicom.dcmread(seg_file)])  # STOW-RS
        finally:
            os.unlink(seg_file)
        label_series_id = info["SeriesInstanceUID"]
        image_info = self.get_image_info(image_id)
        label_info.update({
            "SeriesInstanceUID": label_series_id,
            "Modality": image_info.get("Modality"),
            "PatientID": image_info.get("PatientID"),
            "StudyInstanceUID": image_info.get("StudyInstanceUID"),
        })
        logger.info(f"final label of {image_id} stored as DICOM SEG series {label_series_id}")
        saved = LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        self._submitted.add(image_id)
        return saved

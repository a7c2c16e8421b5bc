"""A DICOMweb datastore that keeps every rater's submitted label as a DICOM SEG in the server (highdicom).

MONAI Label 0.8.5's ``DICOMWebDatastore.save_label`` converts a final label with dcmqi's ``itkimage2segimage``
(downloaded from GitHub at start), keeps one final label per series in its cache (a second rater's Submit replaced
the first one's there) and counts a series with any SEG as labelled, so *Next Sample* offered it to no second rater.
:class:`SegDICOMWebDatastore` applies the raters' rules of a local studies folder (:mod:`lib.rater_datastore`) to the
server: 3D Slicer's "Submit Label" (``PUT /datastore/label?image=<SeriesInstanceUID>`` with the labelmap and
``params`` = ``{"label_info": [...], "client_id": <Client/User-ID>}``) is checked as there (the rater's name, one
lesion outline on the series' grid, at most ``max_raters`` raters per series: 409), written with
:func:`lib.infers.dicom_seg.write_dicom_seg` (no download, no external tool) with the rater as
``ContentCreatorName``, and stored with STOW-RS; every SEG stays in the server. The raters of a series are read
from the server's SEGs (:mod:`lib.seg_raters`: a rater's latest SEG is their label), so *Next Sample*, the
``probunet_raters`` view and Train see every rater, also after a restart or from another server on the same PACS;
each rater's mask is cached under the tag ``rater_<name>`` (``GET /datastore/?output=all`` lists them; Train reads
every rater's latest SEG into the cache with :meth:`sync_rater_labels` and exports the cache). A series is
fetched in the transfer syntax it is stored in (a JPEG 2000 series opens without the server transcoding it).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
from typing import Any, Dict

import numpy as np

try:  # Intel ISA-L's gzip (the [label] extra): standard gzip files, about 5x as fast as zlib at level 1
    from isal import igzip as gzip
except ImportError:  # a venv built before the extra had it
    import gzip
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore

from lib.infers.dicom_seg import DicomSegError, write_dicom_seg
from lib.rater_datastore import (
    RATER_TAG_PREFIX,
    RaterRules,
    lesion_mask,
    lesion_segment_name,
    rater_name,
    rater_slot,
    same_rater,
)
from lib.seg_raters import RaterSeg, SegRaterIndex, latest_by_rater, rater_seg
from monai_probunet.dicom_seg import read_dicom_seg

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


class SegDICOMWebDatastore(RaterRules, DICOMWebDatastore):
    """:class:`~monailabel.datastore.dicom.DICOMWebDatastore` keeping each rater's label as a SEG (module docstring).

    Also: an image id the server does not hold answers 404 (MONAI Label's datastore raises ``IndexError``: 500), a
    server that does not answer 502 at once (:meth:`answer_problem`; said at start too, and ``/info/`` still lists
    the models); a series read for the first time is returned as its cached NIfTI, and MONAI Label's temporary
    conversion is removed (left in the temporary folder, one per series, before). ``max_raters`` is set by the app.
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
    def _seg_raters(self) -> SegRaterIndex:
        """The raters' SEGs of the server (the app turns MONAI Label's datastore into this class after it is built,
        so the index starts on first use)."""
        return self.__dict__.setdefault("_seg_rater_index", SegRaterIndex(self._client))

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

    def _rater_segs(self) -> dict[str, dict[str, RaterSeg]]:
        """``{series: {rater: their latest SEG}}`` as the server holds them now, for the series listed."""
        import requests

        self._check_answering()
        try:
            found = self._seg_raters.by_image()
        except requests.RequestException as e:
            raise HTTPException(status_code=502, detail=f"the raters' SEGs: the DICOMweb server did not answer "
                                f"({type(e).__name__}: {e}).") from None
        return {image: latest_by_rater(segs) for image, segs in found.items()}

    def rater_names(self) -> dict[str, list[str]]:
        """``{series: its raters' names}`` of every series listed (:class:`lib.rater_datastore.RaterRules`)."""
        segs = self._rater_segs()
        return {image: sorted(segs.get(image, {})) for image in self.list_images()}

    def raters(self, image_id: str) -> dict[str, dict[str, Any]]:
        """``{rater: info}`` of a series (``rater``, ``ts``: when their latest SEG was made, ``SeriesInstanceUID``
        of that SEG), from the server."""
        return {name: {"rater": name, "ts": int(seg.ts), "SeriesInstanceUID": seg.series}
                for name, seg in self._rater_segs().get(image_id, {}).items()}

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """The series at least one rater outlined (a SEG of theirs in the server)."""
        return [image for image, raters in self.rater_names().items() if raters]

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """The series no rater has outlined yet."""
        return self.images_for_rater(None)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A rater's label (tag ``rater_<name>``; ``label_id`` is the series): the mask of their latest SEG in the
        server, read into the cache where the cache does not hold that SEG's (:meth:`_cache_rater_label`); other
        tags as MONAI Label."""
        if label_tag.startswith(RATER_TAG_PREFIX):
            return self._cache_rater_label(label_id, label_tag[len(RATER_TAG_PREFIX):])
        return super().get_label_uri(label_id, label_tag, image_id)

    def _cache_rater_label(self, image_id: str, name: str) -> str:
        """The cached NIfTI of rater ``name``'s latest SEG of ``image_id``, read from the server where the cache
        holds another (an older SEG, or none: a cache made by another server or emptied).

        Raises:
            HTTPException: 404 no such rater; 422 a SEG that is not one lesion outline of the series.
        """
        import nibabel as nib

        segs = self._rater_segs().get(image_id, {})
        name = next((r for r in sorted(segs) if same_rater(r, name)), name)
        seg = segs.get(name)
        if seg is None:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} has no SEG of rater {name!r} in the "
                                "DICOMweb server.")
        tag = f"{RATER_TAG_PREFIX}{name}"
        cached = LocalDatastore.get_label_uri(self, image_id, tag)
        if cached and os.path.isfile(cached) and \
                LocalDatastore.get_label_info(self, image_id, tag).get("SeriesInstanceUID") == seg.series:
            return cached
        image = nib.load(self.get_image_uri(image_id))
        datasets = self._client.retrieve_series(seg.study, seg.series)
        try:
            layers, names = read_dicom_seg(datasets[0], self._series_dir(image_id), image.affine, image.shape)
        except (DicomSegError, IndexError) as e:
            raise HTTPException(status_code=422, detail=f"rater {name}'s SEG {seg.series} of {image_id}: {e}") from None
        lesion = [i for i, n in enumerate(names) if n.strip().lower() == "lesion"]
        if not lesion and len(names) != 1:
            raise HTTPException(status_code=422, detail=f"rater {name}'s SEG {seg.series} of {image_id} holds "
                                f"{len(names)} segments ({', '.join(names)}), none named 'lesion': expected one "
                                "lesion outline.")
        mask = layers[lesion[0] if lesion else 0]
        self._cache_label(image_id, tag, mask, image.affine, {"rater": name, "SeriesInstanceUID": seg.series,
                                                             "lesion_voxels": int(mask.sum())}, seg.ts)
        logger.info(f"rater {name}'s SEG {seg.series} of {image_id} read into the cache")
        return LocalDatastore.get_label_uri(self, image_id, tag)

    def _series_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def _cache_label(self, image_id: str, tag: str, mask: np.ndarray, affine: np.ndarray, info: dict[str, Any],
                     ts: float) -> None:
        """Keep a rater's mask in the cache under ``tag`` (MONAI Label's local datastore), with ``ts`` the time of
        its SEG (MONAI Label sets the time it is cached)."""
        import nibabel as nib

        fd, tmp = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        try:
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp)
            LocalDatastore.save_label(self, image_id, tmp, tag, dict(info))
        finally:
            os.remove(tmp)
        LocalDatastore.update_label_info(self, image_id, tag, {"ts": int(ts)})

    def sync_rater_labels(self) -> str:
        """Read every rater's latest SEG of every series listed into the cache (each series' image too); returns
        the cache folder, a local datastore of those images and raters' labels (:mod:`monai_probunet.data.raters`
        exports it for training)."""
        for image_id, raters in self.rater_names().items():
            for name in raters:
                self._cache_rater_label(image_id, name)
        return self._datastore_path

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """A rater's label (the tag ``final`` 3D Slicer's Submit sends, or ``rater_<name>``; the rater as for a
        local studies folder, :func:`lib.rater_datastore.rater_name`) stored in the server as a DICOM SEG and
        kept in the cache under ``rater_<name>``; another tag as MONAI Label stores it (in the cache only).

        Raises:
            HTTPException: as :class:`lib.rater_datastore.RaterDatastore` (400 no rater, 409 a further rater
                beyond ``max_raters``, 400/422 a label that is not one lesion outline of the series), 422 a series
                a SEG cannot reference, 502 the server did not take it.
        """
        import pydicom
        import requests

        label_info = dict(label_info or {})
        ext = "".join(pathlib.Path(label_filename).suffixes)
        name = None if ext == ".bin" else rater_name(label_tag, label_info)
        if name is None:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        image_file = self.get_image_uri(image_id)  # the series' files and its NIfTI in the cache; 404 unknown
        mask, affine = lesion_mask(label_filename, image_file, label_info.get("label_info"))
        with self.__dict__.setdefault("_save_lock", threading.Lock()):
            name = rater_slot(image_id, name, self.raters(image_id), self.max_raters)
            layers, segments = label_segments(mask, [{"name": lesion_segment_name(label_info.get("label_info")),
                                                      "idx": 1}])
            fd, seg_file = tempfile.mkstemp(suffix=".dcm")
            os.close(fd)
            try:
                try:
                    info = write_dicom_seg(seg_file, layers, np.asarray(affine, dtype=np.float64), segments,
                                           self._series_dir(image_id), series_description="MONAI Label rater label",
                                           content_creator=name)
                except DicomSegError as e:
                    raise HTTPException(status_code=422, detail=f"DICOM SEG: {e}") from None
                seg_ds = pydicom.dcmread(seg_file)
                try:
                    self._client.store_instances(datasets=[seg_ds])  # STOW-RS
                except requests.RequestException as e:
                    raise HTTPException(status_code=502, detail=f"the DICOMweb server did not store rater {name}'s "
                                        f"SEG ({type(e).__name__}: {e}); nothing was kept.") from None
            finally:
                os.unlink(seg_file)
            seg = rater_seg(seg_ds)
            self._seg_raters.add(seg)
            image_info = self.get_image_info(image_id)
            tag = f"{RATER_TAG_PREFIX}{name}"
            self._cache_label(image_id, tag, mask, affine, {
                **label_info, "rater": name, "lesion_voxels": int(mask.sum()),
                "SeriesInstanceUID": info["SeriesInstanceUID"], "Modality": image_info.get("Modality"),
                "PatientID": image_info.get("PatientID"), "StudyInstanceUID": image_info.get("StudyInstanceUID"),
            }, seg.ts)
        logger.info(f"label of rater {name!r} for {image_id} stored as DICOM SEG series {info['SeriesInstanceUID']} "
                    f"and cached under tag {tag} ({int(mask.sum())} voxels)")
        return image_id

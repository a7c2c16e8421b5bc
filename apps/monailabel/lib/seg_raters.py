"""The raters' DICOM SEGs that a DICOMweb server holds, by the series they outline.

A rater's Submit on a DICOMweb datastore stores a DICOM SEG in the server (:mod:`lib.dicomweb_datastore`), whose
``ContentCreatorName`` is the rater, ``ReferencedSeriesSequence`` the series outlined and ``ContentDate`` /
``ContentTime`` when it was made. The server is where the raters' labels live: :class:`SegRaterIndex` finds them
there again (after a restart, from another MONAI Label server on the same PACS) with QIDO-RS (``Modality=SEG``) and
the metadata (WADO-RS) of each SEG series not seen before; a SEG series never changes, so its metadata is read once.
A resubmitted outline is a further SEG of the same rater; the latest one is the rater's label, the earlier ones
stay in the server. A SEG without ``ContentCreatorName`` (the model's own answer, stored with ``store_dicom_seg``)
or whose creator is not a rater's name is no rater's.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from lib.rater_datastore import valid_rater_name

logger = logging.getLogger(__name__)

__all__ = ["RaterSeg", "SegRaterIndex", "latest_by_rater"]


@dataclass(frozen=True)
class RaterSeg:
    """One rater's SEG of a series."""

    rater: str  #: ``ContentCreatorName`` as written
    image: str  #: the SeriesInstanceUID of the series outlined
    series: str  #: the SEG's SeriesInstanceUID
    study: str  #: the SEG's StudyInstanceUID
    ts: float  #: ``ContentDate`` + ``ContentTime`` (the writer's local time), seconds since the epoch


def _seg_time(meta: Dataset) -> float:
    """``ContentDate`` + ``ContentTime`` as seconds since the epoch (local time); 0 where missing or malformed."""
    date, time_ = str(meta.get("ContentDate", "") or ""), str(meta.get("ContentTime", "") or "")
    try:
        day = datetime.datetime.strptime(date, "%Y%m%d")
        hhmmss, _, fraction = time_.partition(".")
        hhmmss = (hhmmss + "0000")[:6] if hhmmss else "000000"
        moment = day.replace(hour=int(hhmmss[:2]), minute=int(hhmmss[2:4]), second=int(hhmmss[4:6]))
        return moment.timestamp() + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)
    except ValueError:
        return 0.0


def rater_seg(meta: Dataset) -> RaterSeg | None:
    """The rater's SEG that the metadata of a SEG instance describes; ``None`` where it is no rater's (module
    docstring) or references no series."""
    creator = str(meta.get("ContentCreatorName", "") or "").strip()
    refs = meta.get("ReferencedSeriesSequence") or []
    if not creator or not refs or not refs[0].get("SeriesInstanceUID"):
        return None
    if not valid_rater_name(creator):
        logger.warning(f"SEG {meta.get('SeriesInstanceUID')}: its creator {creator!r} is not a rater's name "
                       "(1-64 letters, digits, '.', '_' or '-'): no rater's label")
        return None
    return RaterSeg(rater=creator, image=str(refs[0].SeriesInstanceUID), series=str(meta.SeriesInstanceUID),
                    study=str(meta.StudyInstanceUID), ts=_seg_time(meta))


def latest_by_rater(segs: list[RaterSeg]) -> dict[str, RaterSeg]:
    """``{rater: their latest SEG}`` of one series' raters' SEGs; names match case-insensitively (``Alice`` is
    ``alice``) and a rater is named as their first SEG names them."""
    first: dict[str, str] = {}
    latest: dict[str, RaterSeg] = {}
    for seg in sorted(segs, key=lambda s: (s.ts, s.series)):
        key = seg.rater.casefold()
        first.setdefault(key, seg.rater)
        latest[key] = seg
    return {first[k]: s for k, s in latest.items()}


class SegRaterIndex:
    """The raters' SEGs of a DICOMweb server (module docstring).

    Args:
        client: the datastore's ``DICOMwebClient``.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._seen: dict[str, RaterSeg | None] = {}  # SEG series -> its rater's SEG (None: no rater's)
        self._lock = threading.Lock()

    def add(self, seg: RaterSeg) -> None:
        """A SEG this server just stored (its metadata need not be asked for)."""
        with self._lock:
            self._seen[seg.series] = seg

    def by_image(self) -> dict[str, list[RaterSeg]]:
        """``{outlined series: its raters' SEGs}``, as the server holds them now (one QIDO-RS request, and one
        metadata request per SEG series not seen before)."""
        found = self._client.search_for_series(search_filters={"Modality": "SEG"}, get_remaining=True)
        uids = [(str(s["0020000D"]["Value"][0]), str(s["0020000E"]["Value"][0])) for s in found
                if s.get("0020000D", {}).get("Value") and s.get("0020000E", {}).get("Value")]
        with self._lock:
            new = [(study, series) for study, series in uids if series not in self._seen]
        for study, series in new:
            meta = self._client.retrieve_series_metadata(study, series)
            seg = rater_seg(Dataset.from_json(meta[0])) if meta else None
            with self._lock:
                self._seen[series] = seg
        with self._lock:
            out: dict[str, list[RaterSeg]] = {}
            for _, series in uids:
                seg = self._seen.get(series)
                if seg is not None:
                    out.setdefault(seg.image, []).append(seg)
        return out

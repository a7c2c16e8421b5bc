"""The label the app returns and the names of its segments (numpy only: no MONAI Label import, unit-testable).
The presence rule and the consensus live in :mod:`monai_probunet.presence_label`, the segment names in
:mod:`monai_probunet.segment_names` (both re-exported here: the CLI's DICOM SEG names its segments the same way).

Presence rule
-------------
The returned label is empty only when the lesion-presence count (hypotheses of S with any lesion voxel) lies
**below** the ambiguous band of the presence rule: with a fitted :class:`~monai_probunet.metrics.PresenceThreshold`
(ambiguous iff ``low < count < high``, counts rescaled to the S it was fitted on) the label is empty iff
``count <= low``; with the fallback rule (ambiguous iff ``0.25 <= p <= 0.75``) it is empty iff ``p < 0.25``; with
either, a label is never drawn from fewer than a quarter of the hypotheses (a rule fitted on lesion crops alone has
``low = 0``). Otherwise the label is the **consensus of the hypotheses that contain a lesion**: a voxel is lesion
when more than half of those hypotheses mark it; if no voxel has such a majority (the outlines do not overlap), the
label is the representative of the most frequent lesion-containing variant.

Segment names
-------------
One segment for the label: ``lesion p=0.62 ambiguous`` / ``lesion p=0.94`` / ``no lesion p=0.06`` (``p`` the
presence probability, ``ambiguous`` the presence-ambiguity flag). With all hypotheses: ``h3 variant B 4/16``
(hypothesis 3 belongs to variant B, the second most frequent outline, drawn by 4 of 16 hypotheses; ``no lesion``
appended for an empty hypothesis).
"""

from __future__ import annotations

from monai_probunet.presence_label import (  # noqa: F401 -- the rule lives in the library (3-D mode uses it too)
    CONSENSUS_RULE,
    FALLBACK_LOW_P,
    MIN_SHOWN_P,
    LabelDecision,
    consensus_label,
    presence_decision,
)
from monai_probunet.segment_names import hypothesis_segment_names, label_segment_name, variant_letter

__all__ = [
    "FALLBACK_LOW_P",
    "MIN_SHOWN_P",
    "LabelDecision",
    "consensus_label",
    "hypothesis_segment_names",
    "label_segment_name",
    "presence_decision",
    "variant_letter",
]

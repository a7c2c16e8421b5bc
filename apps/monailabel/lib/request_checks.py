"""400 answers for infer requests that MONAI Label's endpoint would turn into a bare 500.

MONAI Label 0.8.5's ``POST /infer/{model}`` parses the ``params`` form field with ``json.loads`` and merges it into
the request with ``dict.update`` before the app sees it: non-JSON ``params`` (``JSONDecodeError``), a JSON list or
scalar (``update`` fails) and an empty image id without an uploaded file answer 500 without a useful message.
:func:`install` wraps the endpoint's module-level ``run_inference`` (the route handler looks it up at call time)
with :func:`check_infer_request`, which answers those with 400 and one line naming the problem. ``output=dicom_seg``
is answered with the app's own DICOM SEG (``result_extension`` ``.dcm``, written with highdicom) instead of MONAI
Label's converter (which needs dcmqi and a ``label_info`` parameter).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from fastapi import HTTPException

logger = logging.getLogger(__name__)

__all__ = ["check_infer_request", "install"]

_MAX_SHOWN = 80


def check_infer_request(image: Any, session_id: Any, params: Any, file: Any) -> None:
    """Raise ``HTTPException(400)`` for a ``params`` field that is not a JSON object or an empty image id.

    Parameters
    ----------
    image : str
        The ``image`` query parameter (datastore id).
    session_id : str
        The ``session_id`` query parameter.
    params : str
        The ``params`` form field.
    file : UploadFile or None
        An uploaded image.
    """
    if isinstance(params, (str, bytes)) and params.strip():
        try:
            parsed = json.loads(params)
        except (ValueError, UnicodeDecodeError) as e:
            shown = params if len(params) <= _MAX_SHOWN else params[:_MAX_SHOWN] + "..."
            raise HTTPException(
                status_code=400,
                detail=f"form field 'params' must be a JSON object such as {{\"foreground\": [[120, 88, 40]]}}; "
                f"it is not JSON ({e}): {shown!r}",
            ) from None
        if not isinstance(parsed, dict):
            raise HTTPException(
                status_code=400,
                detail=f"form field 'params' must be a JSON object ({{...}}), got a JSON {type(parsed).__name__}: "
                f"{json.dumps(parsed)[:_MAX_SHOWN]}",
            )
    if not file and not session_id and (not isinstance(image, str) or not image.strip()):
        raise HTTPException(
            status_code=400,
            detail="query parameter 'image' is empty: give the id of an image in the datastore (GET /datastore/) "
            "or upload the image as form field 'file'.",
        )


def install() -> bool:
    """Wrap ``monailabel.endpoints.infer.run_inference`` once; returns whether the wrapper is (now) in place."""
    try:
        from monailabel.endpoints import infer as endpoint
    except ImportError:  # pragma: no cover -- not inside a MONAI Label server
        return False
    original: Callable[..., Any] = endpoint.run_inference
    if getattr(original, "_probunet_checked", False):
        return True

    def run_inference(background_tasks, model, image="", session_id="", params="{}", file=None, label=None,
                      output=None):
        check_infer_request(image, session_id, params, file)
        if output == "dicom_seg":  # the app writes the SEG itself (result_extension .dcm) and answers with it
            p = json.loads(params) if isinstance(params, (str, bytes)) and params.strip() else {}
            params, output = json.dumps({**p, "result_extension": ".dcm"}), "image"
        return original(background_tasks, model, image, session_id, params, file, label, output)

    run_inference._probunet_checked = True  # type: ignore[attr-defined]
    endpoint.run_inference = run_inference
    logger.info("infer requests: params must be a JSON object and the image id non-empty (400 otherwise)")
    return True

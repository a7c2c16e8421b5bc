"""400 answers for requests that MONAI Label's endpoints would turn into a bare 500.

MONAI Label 0.8.5's ``POST /infer/{model}`` parses the ``params`` form field with ``json.loads`` and merges it into
the request with ``dict.update`` before the app sees it: non-JSON ``params`` (``JSONDecodeError``), a JSON list or
scalar (``update`` fails) and an empty image id without an uploaded file answer 500 without a useful message; so do
``PUT /datastore/label`` (its ``params``) and ``PUT /datastore/image/info`` (its ``info``) with a field that is not a
JSON object. :func:`install` wraps the endpoints' module-level functions (the route handlers look them up at call
time): :func:`check_infer_request` and :func:`json_object` answer those with 400 and one line naming the problem.
``output=dicom_seg`` is answered with the app's own DICOM SEG (``result_extension`` ``.dcm``, written with
highdicom) instead of MONAI Label's converter (which needs dcmqi and a ``label_info`` parameter).

The endpoints copy an uploaded image or label into a temporary file and register its removal as a background task,
which runs only after a successful answer: every refused upload stayed in the temporary folder. The wrapped
endpoints run those removals (:func:`_removing_uploads_on_error`) when the request fails.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from fastapi import HTTPException

logger = logging.getLogger(__name__)

__all__ = ["check_infer_request", "install", "json_object"]

_MAX_SHOWN = 80


def json_object(text: Any, field: str, example: str) -> None:
    """Raise ``HTTPException(400)`` when the form field ``field`` is given but is not a JSON object.

    Parameters
    ----------
    text : str
        The field's value (an empty one is MONAI Label's ``{}``).
    field : str
        The form field's name, for the message.
    example : str
        A valid value, for the message.
    """
    if not isinstance(text, (str, bytes)) or not text.strip():
        return
    try:
        parsed = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        shown = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
        raise HTTPException(status_code=400, detail=f"form field {field!r} must be a JSON object such as {example}; "
                            f"it is not JSON ({e}): {shown!r}") from None
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=400, detail=f"form field {field!r} must be a JSON object ({{...}}), got a "
                            f"JSON {type(parsed).__name__}: {json.dumps(parsed)[:_MAX_SHOWN]}")


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
    json_object(params, "params", '{"foreground": [[120, 88, 40]]}')
    if not file and not session_id and (not isinstance(image, str) or not image.strip()):
        raise HTTPException(
            status_code=400,
            detail="query parameter 'image' is empty: give the id of an image in the datastore (GET /datastore/) "
            "or upload the image as form field 'file'.",
        )


def _removing_uploads_on_error(background_tasks: Any, call: Callable[[], Any]) -> Any:
    """``call()``; if it raises, first run the request's own background removals of its temporary uploads
    (MONAI Label's ``remove_file`` tasks, registered before the failure and otherwise skipped), then re-raise."""
    try:
        return call()
    except BaseException:
        from monailabel.utils.others.generic import remove_file

        for task in list(getattr(background_tasks, "tasks", ())):
            if task.func is remove_file:
                try:
                    task.func(*task.args, **task.kwargs)
                except OSError as e:
                    logger.warning(f"could not remove a temporary upload: {e}")
        raise


def _install_datastore_checks() -> None:
    """Wrap ``save_label`` and ``update_image_info`` of ``monailabel.endpoints.datastore`` once."""
    from monailabel.endpoints import datastore as endpoint

    if getattr(endpoint.save_label, "_probunet_checked", False):
        return
    save_label, update_image_info, add_image = endpoint.save_label, endpoint.update_image_info, endpoint.add_image

    def checked_save_label(background_tasks, image, params="{}", tag="", label=None, user=None):
        json_object(params, "params", '{"label_info": [{"name": "lesion", "idx": 1}], "client_id": "alice"}')
        return _removing_uploads_on_error(
            background_tasks, lambda: save_label(background_tasks, image, params, tag, label, user))

    def checked_add_image(background_tasks, image=None, params="{}", file=None, user=None):
        return _removing_uploads_on_error(
            background_tasks, lambda: add_image(background_tasks, image, params, file, user))

    def checked_update_image_info(image, info="{}", user=None):
        json_object(info, "info", '{"center": [120, 88, 40]}')
        return update_image_info(image, info, user)

    checked_save_label._probunet_checked = True  # type: ignore[attr-defined]
    endpoint.save_label, endpoint.update_image_info = checked_save_label, checked_update_image_info
    endpoint.add_image = checked_add_image


def install() -> bool:
    """Wrap ``monailabel.endpoints.infer.run_inference`` (and the datastore's label and image-info functions) once;
    returns whether the wrappers are (now) in place."""
    try:
        from monailabel.endpoints import infer as endpoint
    except ImportError:  # pragma: no cover -- not inside a MONAI Label server
        return False
    _install_datastore_checks()
    original: Callable[..., Any] = endpoint.run_inference
    if getattr(original, "_probunet_checked", False):
        return True

    def run_inference(background_tasks, model, image="", session_id="", params="{}", file=None, label=None,
                      output=None):
        check_infer_request(image, session_id, params, file)
        if output == "dicom_seg":  # the app writes the SEG itself (result_extension .dcm) and answers with it
            p = json.loads(params) if isinstance(params, (str, bytes)) and params.strip() else {}
            params, output = json.dumps({**p, "result_extension": ".dcm"}), "image"
        return _removing_uploads_on_error(
            background_tasks, lambda: original(background_tasks, model, image, session_id, params, file, label, output))

    run_inference._probunet_checked = True  # type: ignore[attr-defined]
    endpoint.run_inference = run_inference
    logger.info("infer requests: params must be a JSON object and the image id non-empty (400 otherwise)")
    return True

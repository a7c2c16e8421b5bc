"""Read the image 3D Slicer opens before the radiologist's first click on it.

3D Slicer's MONAI Label module opens an image with ``GET /datastore/image``; the first click comes seconds later,
and without this it waited for the image to be read (the next clicks find it in memory; ``apps/monailabel/README.md``
has the measurement). :func:`install` wraps ``monailabel.endpoints.datastore.download_image`` (the route handlers
look it up at call time): once the image is sent, the ``probunet`` task reads it into its one-image cache in a
background thread (the app's ``read_ahead``, :meth:`~lib.infers.probunet.ProbUNetInfer.prefetch`). A click that comes
first waits for that read and uses it. *Next Sample* reads its image ahead too (the app's ``next_sample``): 3D Slicer
on the same machine loads it from its path, without downloading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response

__all__ = ["install"]


def install() -> bool:
    """Wrap ``download_image`` of ``monailabel.endpoints.datastore`` once; returns whether the wrapper is (now) in
    place."""
    try:
        from monailabel.endpoints import datastore as endpoint
    except ImportError:  # pragma: no cover -- not inside a MONAI Label server
        return False
    original: Callable[..., Any] = endpoint.download_image
    if getattr(original, "_probunet_prefetch", False):
        return True

    def download_image(image: str, check_only: bool = False, check_sum: Any = None) -> Any:
        from monailabel.interfaces.utils.app import app_instance

        answer = original(image, check_only, check_sum)
        read_ahead = app_instance().read_ahead
        if isinstance(answer, Response) and answer.background is None:
            answer.background = BackgroundTask(read_ahead, image_id=image)  # once the file is sent: Slicer first
        else:
            read_ahead(image_id=image)
        return answer

    download_image._probunet_prefetch = True  # type: ignore[attr-defined]
    endpoint.download_image = download_image
    return True

"""A synthetic axial chest CT slice: the anatomy around the ``lidc_phantom`` lesions and its lesion-free crops.

A scene (:func:`draw_chest_scene`) is a list of shapes in millimetres, body centre at the origin, ``x`` to the
image's right (the patient's left), ``y`` down (posterior), painted in order at generic CT numbers:

- body: skin, subcutaneous fat (-120..-80 HU), chest-wall muscle (35..60 HU) around the thoracic cavity;
- bone: ribs at the cavity boundary (cortex 600..1200 HU, marrow 150..350 HU; anterior ones sometimes costal
  cartilage), sternum, scapulae, the vertebra (body, arch, spinous and transverse processes) with the spinal canal
  (10..40 HU) and the paraspinal muscles;
- mediastinum: fat with, by level, trachea or main bronchi (air, soft-tissue wall), oesophagus, aortic arch or
  ascending / descending aorta, pulmonary trunk, superior vena cava, or the heart (myocardium and blood); blood
  unenhanced (35..55 HU) or contrast-enhanced (150..350 HU);
- lungs (-900..-820 HU with a dependent gradient and smooth texture) with vessels (cross-sections and in-plane
  branches, thicker towards the hilum, fainter when thin) and bronchi near the hilum.

:func:`render_chest` evaluates a scene on any window (centre, size, spacing), with a point-spread blur and
correlated noise; :func:`lesion_site` picks a crop centre inside a lung (room for the lesion, sometimes touching the
pleura or a vessel) and :func:`negative_site` the centre of a lesion-free crop on lung, bone, mediastinum, airway or
chest wall, or on a lung vessel (a vessel's cross-section or in-plane branch at the centre: the round soft-tissue
spot in lung that looks most like a small nodule in one slice) or beside one. Only generic anatomy and HU ranges went
into it; no real image was used to tune it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

__all__ = [
    "CLASSES",
    "NEGATIVE_SITES",
    "NEGATIVE_SITE_KINDS",
    "ChestScene",
    "check_negative_sites",
    "draw_chest_scene",
    "render_chest",
    "class_map",
    "lesion_site",
    "negative_site",
    "vessel_sections",
]

#: tissue classes of :func:`class_map`
CLASSES = {"air": 0, "fat": 1, "wall": 2, "bone": 3, "lung": 4, "mediastinum": 5, "airway": 6, "vessel": 7, "bronchus": 8}
#: kinds of lesion-free crop centres and how often :func:`negative_site` picks each by default
NEGATIVE_SITES = {"lung": 0.35, "bone": 0.2, "mediastinum": 0.2, "airway": 0.1, "chest_wall": 0.15}
#: every kind :func:`negative_site` can centre a crop on ("vessel": on a lung vessel itself; "near_vessel": in lung
#: 1.5-4 mm from one, where a click beside a vessel lands)
NEGATIVE_SITE_KINDS = (*NEGATIVE_SITES, "vessel", "near_vessel")
#: distance range (mm) of a "near_vessel" crop centre from the vessel point it is drawn around
NEAR_VESSEL_MM = (1.5, 4.0)
_SITE_CLASSES = {
    "lung": ("lung", "vessel"),
    "bone": ("bone",),
    "mediastinum": ("mediastinum",),
    "airway": ("airway", "bronchus"),
    "chest_wall": ("wall", "fat"),
}
_LUNG = np.nan  # placeholder HU of lung parenchyma, filled with the scene's lung density
_MAP_SPACING = 2.0  # mm, the class map used to pick sites


@dataclass
class ChestScene:
    """Shapes of one synthetic chest slice (mm) and its global CT parameters.

    ``shapes`` are painted in order; each is ``("ellipse", cx, cy, a, b, angle, hu, cls)`` or ``("tube", points
    (N, 2), radii (N,), hu, cls)``; ``hu`` NaN = lung parenchyma. ``extent`` = (half width, half height) of the body.
    """

    shapes: list[tuple] = field(default_factory=list)
    extent: tuple[float, float] = (150.0, 100.0)
    lung_hu: float = -860.0
    lung_gradient: float = 30.0  # HU from anterior to posterior edge of the cavity
    psf_mm: float = 0.5
    noise_hu: float = 20.0
    hilum: list[tuple[float, float]] = field(default_factory=list)
    map_cache: Any = field(default=None, repr=False)  # (key, xs, ys, classes) of the last class_map


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _tube(x: np.ndarray, y: np.ndarray, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    for (x0, y0), (x1, y1), r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
        inside |= d2 <= (r0 + t * (r1 - r0)) ** 2
    return inside


def _bounds(shape: tuple) -> tuple[float, float, float, float]:
    if shape[0] == "ellipse":
        _, cx, cy, a, b = shape[:5]
        r = max(a, b)
        return cx - r, cx + r, cy - r, cy + r
    pts, radii = shape[1], shape[2]
    r = float(np.max(radii))
    return pts[:, 0].min() - r, pts[:, 0].max() + r, pts[:, 1].min() - r, pts[:, 1].max() + r


def _paint(scene: ChestScene, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU (NaN = lung) and class (:data:`CLASSES`) on the grid of increasing, evenly spaced axes ``xs`` (columns)
    and ``ys`` (rows), mm; each shape is evaluated on its bounding box only. Lung vessels and bronchi are painted
    only over lung (or other vessels)."""
    hu = np.full((len(ys), len(xs)), -1000.0)
    cls = np.zeros((len(ys), len(xs)), np.int8)
    dx, dy = (xs[1] - xs[0] if len(xs) > 1 else 1.0), (ys[1] - ys[0] if len(ys) > 1 else 1.0)
    in_lung = np.zeros(max(CLASSES.values()) + 1, bool)
    in_lung[[CLASSES["lung"], CLASSES["vessel"], CLASSES["bronchus"]]] = True
    for shape in scene.shapes:
        bx0, bx1, by0, by1 = _bounds(shape)
        c0, c1 = max(int(np.floor((bx0 - xs[0]) / dx)), 0), min(int(np.ceil((bx1 - xs[0]) / dx)) + 1, len(xs))
        r0, r1 = max(int(np.floor((by0 - ys[0]) / dy)), 0), min(int(np.ceil((by1 - ys[0]) / dy)) + 1, len(ys))
        if c0 >= c1 or r0 >= r1:
            continue
        gy, gx = ys[r0:r1, None], xs[None, c0:c1]
        if shape[0] == "ellipse":
            inside = _ellipse(gx, gy, *shape[1:6])
        else:
            inside = _tube(gx, gy, shape[1], shape[2])
        if shape[-1] in ("vessel", "bronchus"):
            inside &= in_lung[cls[r0:r1, c0:c1]]
        hu[r0:r1, c0:c1][inside] = shape[-2]
        cls[r0:r1, c0:c1][inside] = CLASSES[shape[-1]]
    return hu, cls


def _bone(shapes: list, rng: np.random.Generator, cx: float, cy: float, a: float, b: float, angle: float,
          cortex: float | None = None) -> None:
    cortex = rng.uniform(1.0, 2.0) if cortex is None else cortex
    shapes.append(("ellipse", cx, cy, a, b, angle, rng.uniform(600.0, 1200.0), "bone"))
    if a > cortex + 0.5 and b > cortex + 0.5:
        shapes.append(("ellipse", cx, cy, a - cortex, b - cortex, angle, rng.uniform(150.0, 350.0), "bone"))


def draw_chest_scene(rng: np.random.Generator) -> ChestScene:
    """Draw one synthetic axial chest slice (see the module docstring for its parts and CT numbers)."""
    u = rng.uniform
    ax, ay = u(125.0, 175.0), u(85.0, 120.0)
    fat, muscle = u(3.0, 22.0), u(6.0, 15.0)
    cax, cay = ax - fat - muscle - 4.0, ay - fat - muscle - 4.0
    blood = u(150.0, 350.0) if rng.random() < 0.5 else u(35.0, 55.0)
    fat_hu, muscle_hu = u(-120.0, -80.0), u(35.0, 60.0)
    s: list[tuple] = [
        ("ellipse", 0.0, 0.0, ax, ay, 0.0, u(10.0, 50.0), "wall"),  # skin
        ("ellipse", 0.0, 0.0, ax - 2.0, ay - 2.0, 0.0, fat_hu, "fat"),
        ("ellipse", 0.0, 0.0, ax - fat, ay - fat, 0.0, muscle_hu, "wall"),
        ("ellipse", 0.0, 0.0, cax + 3.0, cay + 3.0, 0.0, muscle_hu + u(-10.0, 10.0), "wall"),  # intercostal
    ]
    # scapulae behind the posterior ribs, inside the chest-wall muscle
    if rng.random() < 0.6:
        for side in (-1, 1):
            t = np.pi / 2 - side * u(0.7, 1.1)
            r = u(6.0, 12.0)
            s.append(("ellipse", (cax + r) * np.cos(t), (cay + r) * np.sin(t), u(22.0, 40.0), u(2.0, 4.5),
                      t + np.pi / 2, u(400.0, 900.0), "bone"))
    # the thoracic cavity: lungs everywhere first, then the mediastinum and the spine cut into them
    s.append(("ellipse", 0.0, 0.0, cax, cay, 0.0, _LUNG, "lung"))
    # ribs at the cavity boundary (cartilage anteriorly sometimes), sternum
    for t in np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(6, 13)))):
        if abs(np.sin(t) + 1) < 0.03 or np.sin(t) > 0.93:  # midline: sternum / spine
            continue
        r = u(1.0, 5.0)
        px, py = (cax + r) * np.cos(t), (cay + r) * np.sin(t)
        tangent = np.arctan2(cay * np.cos(t), -cax * np.sin(t))
        a, b = u(5.0, 13.0), u(3.5, 6.5)
        if np.sin(t) < -0.5 and rng.random() < 0.35:
            s.append(("ellipse", px, py, a, b, tangent, u(80.0, 180.0), "bone"))
        else:
            _bone(s, rng, px, py, a, b, tangent)
    if rng.random() < 0.85:
        _bone(s, rng, u(-3.0, 3.0), -cay - u(2.0, 7.0), u(12.0, 22.0), u(5.0, 9.0), 0.0)
    # spine (painted after the mediastinum, which must not cover it)
    spine: list[tuple] = []
    rv = u(13.0, 19.0)
    yv = cay - rv - u(0.0, 8.0)
    rc = u(6.0, 8.5)
    yc = yv + rv + rc + u(0.5, 2.0)
    for side in (-1, 1):  # paraspinal muscles
        spine.append(("ellipse", side * u(20.0, 30.0), yc + u(8.0, 16.0), u(15.0, 24.0), u(16.0, 26.0), u(-0.3, 0.3),
                      muscle_hu + u(-8.0, 8.0), "wall"))
    s.append(("ellipse", 0.0, yv - u(2.0, 8.0), u(22.0, 34.0), rv + u(2.0, 6.0), 0.0, fat_hu, "mediastinum"))
    _bone(spine, rng, 0.0, yv, rv * u(1.0, 1.2), rv * u(0.85, 1.0), 0.0)
    for side in (-1, 1):  # transverse processes, pedicles, laminae
        _bone(spine, rng, side * (rc + u(10.0, 14.0)), yc - u(0.0, 4.0), u(10.0, 15.0), u(3.0, 5.0), side * u(-0.4, 0.1))
        _bone(spine, rng, side * (rc + 2.0), yc, u(3.5, 5.5), u(6.0, 9.0), 0.0)
    _bone(spine, rng, 0.0, yc + rc + u(12.0, 18.0), u(3.0, 5.0), u(12.0, 18.0), u(-0.1, 0.1))
    spine.append(("ellipse", 0.0, yc, rc, rc * u(0.85, 1.0), 0.0, u(10.0, 40.0), "wall"))  # canal
    # mediastinum
    xm, ym = u(-5.0, 15.0), u(-0.35, 0.05) * cay
    wm = u(28.0, 55.0)
    s.append(("ellipse", xm, ym, wm, u(0.6, 0.9) * cay, 0.0, fat_hu + u(-10.0, 20.0), "mediastinum"))
    s.append(("ellipse", 0.0, (ym + yv) / 2, u(14.0, 24.0), (yv - ym) / 2 + 5.0, 0.0, fat_hu, "mediastinum"))
    level = rng.choice(["upper", "hilar", "cardiac"])
    wall_hu = u(20.0, 60.0)
    ye = yv - rv - u(3.0, 7.0)  # oesophagus, just in front of the spine
    s.append(("ellipse", u(-2.0, 8.0), ye, u(5.0, 8.0), u(4.0, 7.0), 0.0, muscle_hu, "mediastinum"))
    if rng.random() < 0.3:
        s.append(("ellipse", u(-1.0, 1.0) + s[-1][1], ye, u(1.0, 2.5), u(1.0, 2.0), 0.0, -1000.0, "airway"))
    hilum = [(-u(28.0, 45.0), ym + u(-10.0, 15.0)), (u(28.0, 45.0), ym + u(-10.0, 15.0))]
    if level != "upper":
        r = u(10.0, 14.0)  # descending aorta, left of the vertebral body
        s.append(("ellipse", rv * 1.1 + r * u(0.6, 1.0), yv - u(0.0, 8.0), r, r, 0.0, blood, "mediastinum"))
    if level == "upper":
        rt = u(7.0, 11.0)
        yt = ye - u(9.0, 14.0)
        s.append(("ellipse", u(-4.0, 4.0), yt, rt + u(1.5, 2.5), rt + 2.0, 0.0, wall_hu, "mediastinum"))
        s.append(("ellipse", s[-1][1], yt, rt, rt * u(0.8, 1.0), 0.0, u(-1000.0, -960.0), "airway"))
        s.append(("ellipse", u(5.0, 20.0), yt - u(15.0, 30.0), u(22.0, 38.0), u(9.0, 14.0), u(-0.7, -0.2), blood,
                  "mediastinum"))
        s.append(("ellipse", -u(18.0, 28.0), yt - u(10.0, 25.0), r := u(7.0, 11.0), r, 0.0, blood, "mediastinum"))
    elif level == "hilar":
        yb = ye - u(8.0, 14.0)
        for side in (-1, 1):
            rb = u(5.0, 8.0)
            xb = side * u(12.0, 22.0)
            s.append(("ellipse", xb, yb, rb + 1.8, rb + 1.8, 0.0, wall_hu, "mediastinum"))
            s.append(("ellipse", xb, yb, rb, rb * u(0.7, 1.0), 0.0, u(-1000.0, -960.0), "airway"))
            s.append(("ellipse", side * u(25.0, 38.0), yb - u(5.0, 15.0), u(8.0, 14.0), u(6.0, 10.0), u(-0.5, 0.5),
                      blood, "mediastinum"))  # pulmonary arteries
        s.append(("ellipse", u(-10.0, 8.0), ym - u(5.0, 20.0), r := u(13.0, 18.0), r, 0.0, blood, "mediastinum"))
        s.append(("ellipse", u(12.0, 25.0), ym - u(10.0, 25.0), r := u(12.0, 16.0), r, 0.0, blood, "mediastinum"))
        s.append(("ellipse", -u(20.0, 30.0), ym - u(0.0, 15.0), r := u(7.0, 11.0), r, 0.0, blood, "mediastinum"))
    else:
        hx, hy = u(5.0, 25.0), ym - u(5.0, 20.0)
        ha, hb, hang = u(45.0, 65.0), u(35.0, 50.0), u(-0.6, -0.25)
        s.append(("ellipse", hx, hy, ha + u(2.0, 6.0), hb + u(2.0, 6.0), hang, fat_hu, "mediastinum"))  # epicardial
        s.append(("ellipse", hx, hy, ha, hb, hang, u(40.0, 100.0) if blood > 100 else blood + u(-5, 10),
                  "mediastinum"))
        for _ in range(int(rng.integers(2, 5))):  # chambers
            s.append(("ellipse", hx + u(-0.5, 0.5) * ha, hy + u(-0.5, 0.5) * hb, u(0.2, 0.45) * ha, u(0.2, 0.45) * hb,
                      u(0, np.pi), blood, "mediastinum"))
    s.extend(spine)
    # lung vessels (need the lung's extent: a class map of what is drawn so far)
    scene = ChestScene(
        shapes=s, extent=(ax, ay), lung_hu=u(-900.0, -820.0), lung_gradient=u(0.0, 60.0), psf_mm=u(0.4, 1.2),
        noise_hu=u(10.0, 35.0), hilum=hilum,
    )
    xs, ys, cls = class_map(scene)
    lung = np.argwhere(cls == CLASSES["lung"])
    if len(lung):
        vessel_hu = lambda r: scene.lung_hu + min(1.0, 0.35 + r / 1.5) * (blood - scene.lung_hu)  # noqa: E731
        for i in rng.choice(len(lung), size=min(len(lung), int(rng.integers(25, 70))), replace=False):
            px, py = xs[lung[i][1]] + u(-1, 1), ys[lung[i][0]] + u(-1, 1)
            d = min(np.hypot(px - hx_, py - hy_) for hx_, hy_ in hilum)
            r = u(0.5, 1.6) + 4.5 * np.exp(-d / 25.0) * u(0.5, 1.0)
            s.append(("ellipse", px, py, r, r * u(0.7, 1.0), u(0, np.pi), vessel_hu(r), "vessel"))
            if d < 45 and rng.random() < 0.3:  # a bronchus beside its artery
                t = u(0, 2 * np.pi)
                bx, by = px + (2 * r + 0.5) * np.cos(t), py + (2 * r + 0.5) * np.sin(t)
                s.append(("ellipse", bx, by, r + 0.8, r + 0.8, 0.0, wall_hu, "vessel"))
                s.append(("ellipse", bx, by, r, r, 0.0, u(-1000.0, -950.0), "bronchus"))
        for _ in range(int(rng.integers(3, 9))):  # in-plane branches from a hilum outward
            hx_, hy_ = hilum[int(rng.integers(2))]
            end = lung[int(rng.integers(len(lung)))]
            p2 = np.array([xs[end[1]], ys[end[0]]])
            p0 = np.array([hx_, hy_]) + 0.25 * (p2 - np.array([hx_, hy_]))
            p1 = (p0 + p2) / 2 + rng.normal(0.0, 12.0, 2)
            t = np.linspace(0.0, 1.0, 9)[:, None]
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            radii = u(1.5, 3.5) * (1.0 - 0.7 * t[:, 0])
            s.append(("tube", pts, radii, vessel_hu(float(radii.mean())), "vessel"))
    return scene


def class_map(scene: ChestScene, spacing: float = _MAP_SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x (W,), y (H,), classes (H, W) int8)`` of the whole body on a ``spacing`` mm grid (:data:`CLASSES`)."""
    ax, ay = scene.extent
    if scene.map_cache is None or scene.map_cache[0] != (len(scene.shapes), spacing):
        xs = np.arange(-ax - 4.0, ax + 4.0, spacing)
        ys = np.arange(-ay - 4.0, ay + 4.0, spacing)
        scene.map_cache = ((len(scene.shapes), spacing), xs, ys, _paint(scene, xs, ys)[1])
    return scene.map_cache[1], scene.map_cache[2], scene.map_cache[3]


def render_chest(
    scene: ChestScene,
    rng: np.random.Generator,
    centre: tuple[float, float],
    shape: tuple[int, int],
    spacing: float,
    paint: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """CT numbers (HU, float64 ``shape``) of a window of the scene centred at ``centre`` = (x, y) mm.

    Lung parenchyma gets the scene's density, dependent gradient and smooth texture, soft tissue and marrow their
    own texture; ``paint`` (HU array -> HU array) may add structures such as a lesion; then the point-spread blur and
    correlated noise of the scene apply to all of it alike (the draws come from ``rng``).
    """
    rows = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing + centre[1]
    cols = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing + centre[0]
    hu, cls = _paint(scene, cols, rows)
    gy = np.broadcast_to(rows[:, None], shape)
    mm = 1.0 / spacing
    texture = gaussian_filter(rng.standard_normal(shape), 2.5 * mm)
    texture *= 25.0 / (texture.std() + 1e-12)
    noise = gaussian_filter(rng.standard_normal(shape), 0.35 * mm)
    noise *= scene.noise_hu / (noise.std() + 1e-12)
    lung = np.isnan(hu)
    cay = scene.extent[1]
    hu[lung] = (scene.lung_hu + scene.lung_gradient * (gy[lung] / cay + 1.0) / 2 + texture[lung])
    # tissue heterogeneity: soft tissue is as textured as the lesions are (so texture alone does not mark a lesion),
    # marrow gets a finer trabecular pattern
    soft = np.isin(cls, [CLASSES[c] for c in ("fat", "wall", "mediastinum")])
    bone = cls == CLASSES["bone"]
    tissue = gaussian_filter(rng.standard_normal(shape), 1.0 * mm)
    hu[soft] += rng.uniform(8.0, 25.0) * tissue[soft] / (tissue.std() + 1e-12)
    trabecular = gaussian_filter(rng.standard_normal(shape), 0.6 * mm)
    hu[bone] += rng.uniform(30.0, 90.0) * trabecular[bone] / (trabecular.std() + 1e-12)
    if paint is not None:
        hu = paint(hu)
    return gaussian_filter(hu, scene.psf_mm * mm) + noise


def lesion_site(scene: ChestScene, rng: np.random.Generator, radius_mm: float) -> tuple[float, float]:
    """A lesion centre (x, y) mm inside a lung: usually with ``radius_mm`` + 3 mm of lung around it, one time in
    four touching the pleura or a vessel; the deepest lung point when no point has room."""
    xs, ys, cls = class_map(scene)
    lung = cls == CLASSES["lung"]
    depth = distance_transform_edt(lung) * _MAP_SPACING
    margin = rng.uniform(0.0, 2.0) if rng.random() < 0.25 else rng.uniform(3.0, 12.0)
    ok = np.argwhere(depth >= radius_mm + margin)
    if not len(ok):
        ok = np.argwhere(depth >= depth.max() - 1e-6) if depth.max() > 0 else np.argwhere(cls > 0)
    r, c = ok[int(rng.integers(len(ok)))]
    return float(xs[c] + rng.uniform(-1, 1)), float(ys[r] + rng.uniform(-1, 1))


def negative_site(
    scene: ChestScene, rng: np.random.Generator, weights: Mapping[str, float] | None = None
) -> tuple[tuple[float, float], str]:
    """A lesion-free crop centre (x, y) mm and its kind; a kind absent from the scene falls back to lung.

    Args:
        scene: the chest slice.
        rng: draws the kind and the site.
        weights: how often each kind of :data:`NEGATIVE_SITE_KINDS` is picked (relative; default
            :data:`NEGATIVE_SITES`). ``"vessel"`` centres the crop on a lung vessel: a cross-section's centre, or a
            point of an in-plane branch, within 0.5 mm; ``"near_vessel"`` on lung :data:`NEAR_VESSEL_MM` from such
            a point (the vessel itself when no such lung point is found in a few tries).
    """
    weights = dict(NEGATIVE_SITES if weights is None else check_negative_sites(weights))
    kinds = list(weights)
    p = np.array([float(weights[k]) for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    if kind in ("vessel", "near_vessel"):
        centre = _vessel_site(scene, rng, near=kind == "near_vessel")
        if centre is not None:
            return centre, kind
        kind = "lung"
    xs, ys, cls = class_map(scene)
    where = np.argwhere(np.isin(cls, [CLASSES[c] for c in _SITE_CLASSES[kind]]))
    if not len(where):
        kind = "lung"
        where = np.argwhere(np.isin(cls, [CLASSES[c] for c in _SITE_CLASSES[kind]]))
    r, c = where[int(rng.integers(len(where)))]
    return (float(xs[c] + rng.uniform(-1, 1)), float(ys[r] + rng.uniform(-1, 1))), kind


def check_negative_sites(weights: Mapping[str, float]) -> dict[str, float]:
    """``weights`` as a dict after checking it: known kinds (:data:`NEGATIVE_SITE_KINDS`), weights >= 0, some > 0.

    Raises:
        ValueError: naming the key or value that is wrong.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"negative_sites: expected a mapping kind -> weight over {list(NEGATIVE_SITE_KINDS)}, got "
                         f"{weights!r}.")
    out: dict[str, float] = {}
    for kind, w in weights.items():
        if kind not in NEGATIVE_SITE_KINDS:
            raise ValueError(f"negative_sites: unknown kind {kind!r}; expected one of {list(NEGATIVE_SITE_KINDS)}.")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"negative_sites[{kind!r}]: expected a weight >= 0, got {w!r}.")
        out[kind] = float(w)
    if not sum(out.values()) > 0:
        raise ValueError(f"negative_sites: expected at least one weight > 0, got {weights!r}.")
    return out


def _vessel_site(scene: ChestScene, rng: np.random.Generator, near: bool = False) -> tuple[float, float] | None:
    """The centre of a random lung vessel's cross-section (3 of 4 times when the scene has both) or a point of an
    in-plane branch, jittered by up to 0.5 mm, or with ``near`` a lung point :data:`NEAR_VESSEL_MM` from it in a
    random direction; ``None`` for a scene without lung vessels."""
    xs, ys, cls = class_map(scene)
    lung = np.isin(cls, [CLASSES["lung"], CLASSES["vessel"]])

    def in_lung(x: float, y: float) -> bool:
        return bool(lung[np.abs(ys - y).argmin(), np.abs(xs - x).argmin()])

    sections = [(sh[1], sh[2]) for sh in vessel_sections(scene)]
    branch_points = [[(x, y) for x, y in sh[1] if in_lung(x, y)] for sh in scene.shapes
                     if sh[0] == "tube" and sh[-1] == "vessel"]
    branch_points = [pts for pts in branch_points if pts]
    if not sections and not branch_points:
        return None
    if sections and (not branch_points or rng.random() < 0.75):
        x, y = sections[int(rng.integers(len(sections)))]
    else:
        pts = branch_points[int(rng.integers(len(branch_points)))]
        x, y = pts[int(rng.integers(len(pts)))]
    if near:
        for _ in range(8):
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(*NEAR_VESSEL_MM)
            px, py = x + dist * np.cos(angle), y + dist * np.sin(angle)
            if in_lung(px, py):
                return float(px), float(py)
    return float(x + rng.uniform(-0.5, 0.5)), float(y + rng.uniform(-0.5, 0.5))


def vessel_sections(scene: ChestScene) -> list[tuple]:
    """The scene's lung-vessel cross-sections, ``("ellipse", cx, cy, a, b, angle, hu, "vessel")`` each; a bronchus's
    wall (painted as vessel, with the bronchus at its centre) is not one."""
    bronchi = {(sh[1], sh[2]) for sh in scene.shapes if sh[0] == "ellipse" and sh[-1] == "bronchus"}
    return [sh for sh in scene.shapes if sh[0] == "ellipse" and sh[-1] == "vessel" and (sh[1], sh[2]) not in bronchi]


def scene_summary(scene: ChestScene) -> dict[str, Any]:
    """Counts of the scene's shapes per class (for inspection)."""
    out: dict[str, Any] = {}
    for shape in scene.shapes:
        out[shape[-1]] = out.get(shape[-1], 0) + 1
    return out

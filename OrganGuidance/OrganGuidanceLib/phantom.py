"""A synthetic abdominal CT phantom with organ labels and a rectal tumor.

The demo and the tests need a CT that anyone can generate offline, whose organ
masks and tumor are known exactly. The anatomy is a painter's algorithm over
signed-distance primitives (mm, anti-aliased over about one voxel), in patient
LPS coordinates (x to the patient's left, y posterior, z superior):

- body: skin, subcutaneous fat, abdominal-wall muscle ring, visceral fat; the
  CT table lies below it, separated by air, so that the FLARE24 body crop
  (largest connected component of HU > 50, §3) has something to discard;
- spine (lumbar vertebrae L1-L5 with discs and posterior elements), sacrum,
  iliac wings, femoral heads; liver, spleen, kidneys, aorta/IVC and iliac
  vessels, psoas and gluteal muscles, so that a multi-organ segmentation (MOS)
  holds organs outside the organs of interest (OOI) as TotalSegmentator's does;
- the GI tract as tubes with a wall and a lumen of gas or positive oral
  contrast (with dependent air-fluid levels, patient supine): stomach,
  duodenum, small bowel loops, colon from caecum to rectum, urinary bladder;
- a rectal tumor: eccentric wall thickening over several 5 mm slices. AG-CRC
  §III-D: "colorectal tumors usually grow on the bowel walls"; its volume is
  near the RJH-Colon median of 32 cm³ (AG-CRC §IV-A).

Labels are TotalSegmentator v2 ``total`` ids looked up by name in
``class_map["total"]`` (never hard-coded). The rectum is part of ``colon``
(TotalSegmentator v2 has no rectum class), so the tumor lies inside ``colon``.
Default grid: 5.0 mm slices (AG-CRC: median z spacing of RJH-Colon and
MSD-Colon), 2.75 mm in-plane, 64 x 128 x 128 voxels; builds in a fraction of a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.interpolate import CubicSpline

from OrganGuidanceLib.image import Image

# Hounsfield units of a portal-venous-phase abdominal CT.
AIR_HU = -1000.0
FAT_HU = -100.0
VISCERAL_FAT_HU = -90.0
SKIN_HU = 50.0
MUSCLE_HU = 50.0
WALL_HU = 40.0  # bowel wall
TUMOR_HU = 60.0
CONTRAST_HU = 250.0  # positive oral contrast
URINE_HU = 10.0
LIVER_HU = 105.0
SPLEEN_HU = 110.0
KIDNEY_HU = 150.0
ARTERY_HU = 160.0
VEIN_HU = 135.0
CORTICAL_HU = 700.0
CANCELLOUS_HU = 300.0
DISC_HU = 90.0
TABLE_HU = 200.0
NOISE_HU = 10.0

ANATOMY_CENTER_Z_MM = 160.0  # the anatomy spans z = 0 (pelvic floor) .. 330 mm (gastric fundus)
BODY_SEMI_AXES_MM = (150.0, 110.0)  # left-right, anterior-posterior half widths of a slim adult
SKIN_MM, SUBCUTANEOUS_FAT_MM, WALL_MUSCLE_MM = 3.0, 18.0, 10.0
BOWEL_WALL_MM = 3.5  # normal distended colonic wall is about 3 mm thick
EMPTY, FULL = 2.0, -2.0  # tube fill levels: all gas, all fluid (see ``_Tube.fill``)


@dataclass
class Phantom:
    ct: Image  # int16 HU
    labels: Image  # uint8, TotalSegmentator v2 ``total`` ids
    tumor: Image  # uint8 0/1, ground truth
    label_names: Dict[int, str] = field(default_factory=dict)  # ids present in ``labels``


@dataclass
class _Tube:
    """A tube along a smooth centreline through ``points`` (mm); per-point radius and fill.

    ``fill``: dependent fluid level as a fraction of the radius measured from the
    centreline towards posterior (supine patient): lumen voxels posterior of it
    hold fluid, the others gas. ``FULL`` fills the lumen, ``EMPTY`` leaves gas only.
    """

    organ: Optional[str]
    points: Sequence[Sequence[float]]
    radius: Sequence[float]
    fill: Sequence[float]
    wall_mm: float = BOWEL_WALL_MM
    wall_hu: float = WALL_HU
    fluid_hu: float = CONTRAST_HU


Region = Tuple[Tuple[slice, slice, slice], Tuple[np.ndarray, np.ndarray, np.ndarray]]


class _Canvas:
    """CT and label arrays on an identity-direction grid centred on the anatomy."""

    def __init__(self, shape_zyx: Tuple[int, int, int], spacing_xyz: Tuple[float, float, float]) -> None:
        nz, ny, nx = shape_zyx
        sx, sy, sz = spacing_xyz
        self.x = (np.arange(nx) - (nx - 1) / 2) * sx
        self.y = (np.arange(ny) - (ny - 1) / 2) * sy
        self.z = ANATOMY_CENTER_Z_MM + (np.arange(nz) - (nz - 1) / 2) * sz
        self.ct = np.full(shape_zyx, AIR_HU, dtype=np.float32)
        self.labels = np.zeros(shape_zyx, dtype=np.uint8)
        self.soft_mm = float(min(sx, sy))  # anti-aliasing width: partial volume of about a voxel

    def region(self, lower: Sequence[float], upper: Sequence[float]) -> Optional[Region]:
        """Voxels whose centres lie in the box [lower, upper] (x, y, z mm), with broadcastable coordinates."""
        slices = []
        for axis, low, high in zip((self.z, self.y, self.x), lower[::-1], upper[::-1]):
            start, stop = np.searchsorted(axis, low, "left"), np.searchsorted(axis, high, "right")
            if start >= stop:
                return None
            slices.append(slice(int(start), int(stop)))
        z, y, x = (axis[s] for axis, s in zip((self.z, self.y, self.x), slices))
        return tuple(slices), (x[None, None, :], y[None, :, None], z[:, None, None])  # type: ignore[return-value]

    def everywhere(self) -> Region:
        return self.region((-np.inf,) * 3, (np.inf,) * 3)  # type: ignore[return-value]

    def paint(self, slices: Tuple[slice, ...], sdf: np.ndarray, hu, label: Optional[int] = None) -> None:
        view = self.ct[slices]
        alpha = np.clip(0.5 - sdf / self.soft_mm, 0.0, 1.0)
        view += alpha * (np.asarray(hu, dtype=np.float32) - view)
        if label is not None:
            self.labels[slices][np.broadcast_to(sdf <= 0, view.shape)] = label


# --- signed distance primitives (negative inside, mm) ------------------------------
def _ellipse_sdf(u: np.ndarray, v: np.ndarray, a, b) -> np.ndarray:
    """Approximate distance to an ellipse with half axes a, b (exact near the boundary)."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    k1 = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return np.where(k1 > 0, k0 * (k0 - 1) / np.maximum(k1, 1e-9), -np.minimum(a, b))


def _ellipsoid_sdf(x, y, z, center, semi, axis_xy: Tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """Ellipsoid whose first half axis points along ``axis_xy`` in the axial plane."""
    px, py, pz = x - center[0], y - center[1], z - center[2]
    cos, sin = np.asarray(axis_xy, dtype=float) / np.hypot(*axis_xy)
    u, v = px * cos + py * sin, -px * sin + py * cos
    a, b, c = semi
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (pz / c) ** 2)
    k1 = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (pz / c**2) ** 2)
    return np.where(k1 > 0, k0 * (k0 - 1) / np.maximum(k1, 1e-9), -min(semi))


def _superellipse_sdf(u: np.ndarray, v: np.ndarray, a: float, b: float, power: float) -> np.ndarray:
    """Approximate distance to |u/a|^p + |v/b|^p = 1 (first-order: f / |grad f|); a boxy torso."""
    au, av = np.abs(u) / a + 1e-9, np.abs(v) / b + 1e-9
    total = au**power + av**power
    f = total ** (1 / power)
    common = total ** (1 / power - 1)
    gradient = np.hypot(common * au ** (power - 1) / a, common * av ** (power - 1) / b)
    return (f - 1) / gradient


def _box_sdf(x, y, z, center, half) -> np.ndarray:
    q = [np.abs(c - m) - h for c, m, h in zip((x, y, z), center, half)]
    outside = np.sqrt(sum(np.maximum(component, 0) ** 2 for component in q))
    return outside + np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0)


def _resample(points: np.ndarray, values: Sequence[Sequence[float]], step_mm: float = 3.0):
    """Dense points on a natural cubic spline through ``points``; values interpolated along it."""
    points = np.asarray(points, dtype=float)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    samples = np.linspace(0.0, chord[-1], max(2, int(np.ceil(chord[-1] / step_mm)) + 1))
    dense = CubicSpline(chord, points, axis=0, bc_type="natural")(samples)
    return dense, [np.interp(samples, chord, np.asarray(v, dtype=float)) for v in values]


def _tube_fields(canvas: _Canvas, tube: _Tube):
    """Signed distance to a chain of tapered capsules, and the lumen content selector.

    Returns (slices, sdf, depth, level): ``depth`` is the posterior offset of the
    voxel from its nearest centreline point in radii; fluid where depth > level.
    """
    points, (radius, level) = _resample(np.asarray(tube.points), [tube.radius, tube.fill])
    margin = float(radius.max()) + canvas.soft_mm
    region = canvas.region(points.min(axis=0) - margin, points.max(axis=0) + margin)
    if region is None:
        return None
    slices, (xs, ys, zs) = region
    xs, ys, zs = xs.ravel(), ys.ravel(), zs.ravel()
    shape = (zs.size, ys.size, xs.size)
    sdf = np.full(shape, np.inf, dtype=np.float32)
    depth = np.zeros(shape, dtype=np.float32)
    fluid_level = np.zeros(shape, dtype=np.float32)
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        reach = max(radius[i], radius[i + 1]) + canvas.soft_mm
        low, high = np.minimum(a, b) - reach, np.maximum(a, b) + reach
        box = []
        for axis, lo, hi in zip((zs, ys, xs), low[::-1], high[::-1]):
            box.append(slice(int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, "right"))))
        if any(s.start >= s.stop for s in box):
            continue
        px = xs[box[2]][None, None, :] - a[0]
        py = ys[box[1]][None, :, None] - a[1]
        pz = zs[box[0]][:, None, None] - a[2]
        d = b - a
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
        qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
        r = radius[i] + t * (radius[i + 1] - radius[i])
        distance = np.sqrt(qx * qx + qy * qy + qz * qz) - r
        sub = tuple(box)
        closer = distance < sdf[sub]
        sdf[sub] = np.where(closer, distance, sdf[sub])
        depth[sub] = np.where(closer, qy / r, depth[sub])
        fluid_level[sub] = np.where(closer, level[i] + t * (level[i + 1] - level[i]), fluid_level[sub])
    return slices, sdf, depth, fluid_level


def _paint_tube(canvas: _Canvas, tube: _Tube, label: Optional[int]) -> None:
    fields = _tube_fields(canvas, tube)
    if fields is None:
        return
    slices, sdf, depth, level = fields
    content = np.where(depth > level, tube.fluid_hu, AIR_HU)
    if tube.wall_mm > 0:
        canvas.paint(slices, sdf, tube.wall_hu, label)
        canvas.paint(slices, sdf + tube.wall_mm, content)
    else:  # vessels and muscles: solid
        canvas.paint(slices, sdf, content, label)


def _paint_bone(canvas: _Canvas, slices, sdf: np.ndarray, label: Optional[int], cortex_mm: float = 2.5) -> None:
    canvas.paint(slices, sdf, CORTICAL_HU, label)
    canvas.paint(slices, sdf + cortex_mm, CANCELLOUS_HU)


# --- anatomy -------------------------------------------------------------------------
def _mirror(points: Sequence[Sequence[float]]) -> List[List[float]]:
    """Left-right mirror image (x -> -x) of control points."""
    return [[-p[0], p[1], p[2]] for p in points]


def _jitter(rng: np.random.Generator, points: Sequence[Sequence[float]], sd_mm: float) -> np.ndarray:
    """Small seeded displacement of inner control points: each seed a slightly different patient."""
    points = np.asarray(points, dtype=float).copy()
    points[1:-1] += rng.normal(0.0, sd_mm, size=points[1:-1].shape)
    return points


def _small_bowel_path() -> List[List[float]]:
    """Jejunum/ileum loops: a serpentine in two coronal layers, 30 mm between loop centrelines."""
    path = [[35, -5, 212], [50, -22, 205]]
    for row, z in enumerate((200, 170, 140)):  # posterior layer, right-left-right ...
        xs = (48, -48) if row % 2 == 0 else (-48, 48)
        path += [[xs[0], -25, z], [0, -28, z], [xs[1], -25, z]]
    path += [[-62, -40, 140], [-48, -55, 140], [0, -57, 140], [48, -55, 140], [62, -55, 155]]
    path += [[48, -55, 170], [0, -57, 170], [-45, -55, 168], [-68, -40, 158]]  # terminal ileum into the caecum
    return path


def _gi_tubes(rng: np.random.Generator) -> List[_Tube]:
    colon = [  # caecum -> ascending -> transverse -> descending -> sigmoid -> rectum -> anal canal
        ([-88, -8, 135], 26, 0.3), ([-92, 0, 170], 24, 0.4), ([-90, 5, 215], 22, 0.5),
        ([-72, -30, 238], 21, EMPTY), ([-40, -58, 222], 20, EMPTY), ([0, -62, 214], 20, EMPTY),
        ([45, -55, 224], 20, EMPTY), ([82, -20, 252], 19, EMPTY), ([97, 5, 240], 18, EMPTY),
        ([97, 8, 195], 17, 0.6), ([95, 5, 150], 16, 0.6), ([72, -15, 118], 15, 0.6),
        ([38, -28, 104], 15, 0.6), ([12, -5, 112], 15, 0.6), ([0, 22, 108], 17, EMPTY),
        ([0, 35, 80], 18, EMPTY), ([0, 35, 45], 18, EMPTY), ([0, 25, 18], 9, EMPTY), ([0, 20, 0], 6, EMPTY),
    ]
    stomach = [  # fundus (dependent: fluid) -> body -> antrum (anterior: gas) -> pylorus
        ([42, 30, 335], 30, FULL), ([55, 8, 305], 38, -0.3), ([55, -22, 278], 32, 0.1),
        ([35, -45, 262], 24, 0.3), ([8, -45, 262], 18, 0.3), ([-12, -35, 262], 13, FULL),
    ]
    duodenum = [
        [-12, -35, 262], [-40, -22, 258], [-52, 0, 240], [-50, 4, 212], [-35, 2, 193],
        [-5, -3, 189], [25, -3, 192], [35, -5, 212],
    ]
    small_bowel = _jitter(rng, _small_bowel_path(), 1.5)
    return [
        _Tube("stomach", [p for p, _, _ in stomach], [r for _, r, _ in stomach], [f for _, _, f in stomach], wall_mm=4.5),
        _Tube("duodenum", duodenum, [13] * len(duodenum), [FULL] * len(duodenum), wall_mm=2.5),
        _Tube("small_bowel", small_bowel, [11] * len(small_bowel), [FULL] * len(small_bowel), wall_mm=2.5),
        _Tube("colon", _jitter(rng, [p for p, _, _ in colon], 2.0), [r for _, r, _ in colon],
              [f for _, _, f in colon], fluid_hu=CONTRAST_HU),
    ]


def _solid(organ: str, points: Sequence[Sequence[float]], radius: Sequence[float], hu: float) -> _Tube:
    """A tube without wall or lumen: a vessel full of contrast-enhanced blood, or a muscle."""
    return _Tube(organ, points, radius, [FULL] * len(points), wall_mm=0.0, fluid_hu=hu)


def _vessel_and_muscle_tubes() -> List[_Tube]:
    iliac_artery = [[12, 12, 178], [35, 15, 135], [60, 12, 85], [78, -5, 30]]
    iliac_vein = [[-12, 18, 172], [22, 22, 135], [52, 20, 85], [72, 0, 30]]
    psoas = [[28, 40, 300], [38, 38, 230], [52, 32, 160], [70, 10, 95], [82, -12, 35]]
    tubes = [
        _solid("aorta", [[14, 5, 340], [12, 8, 178]], [11, 10], ARTERY_HU),
        _solid("inferior_vena_cava", [[-20, 10, 340], [-14, 16, 172]], [11, 11], VEIN_HU),
    ]
    for side in ("left", "right"):
        place = (lambda points: points) if side == "left" else _mirror  # the patient's left is +x
        tubes.append(_solid(f"iliac_artery_{side}", place(iliac_artery), [6, 6, 5, 5], ARTERY_HU))
        tubes.append(_solid(f"iliac_vena_{side}", place(iliac_vein), [7, 7, 7, 6], VEIN_HU))
        tubes.append(_solid(f"iliopsoas_{side}", place(psoas), [7, 13, 19, 18, 14], MUSCLE_HU))
    return tubes


def _paint_body(canvas: _Canvas) -> np.ndarray:
    """Skin, subcutaneous fat, muscle ring, visceral fat, table, back and gluteal muscles.

    Returns the SDF of the abdominal cavity, shape (1, ny, nx): the torso is a prism along z.
    """
    slices, (x, y, z) = canvas.everywhere()
    body = _superellipse_sdf(x, y, *BODY_SEMI_AXES_MM, power=2.6)
    canvas.paint(slices, body, SKIN_HU)
    canvas.paint(slices, body + SKIN_MM, FAT_HU)
    canvas.paint(slices, body + SKIN_MM + SUBCUTANEOUS_FAT_MM, MUSCLE_HU)
    cavity = body + SKIN_MM + SUBCUTANEOUS_FAT_MM + WALL_MUSCLE_MM
    canvas.paint(slices, cavity, VISCERAL_FAT_HU)
    # Carbon-fibre table top 8 mm below the back, not touching it.
    table = np.maximum(np.abs(y - (BODY_SEMI_AXES_MM[1] + 14)) - 4, np.abs(x) - 170)
    canvas.paint(slices, table, TABLE_HU)
    for sign in (1, -1):  # erector spinae beside the spinous processes
        canvas.paint(slices, np.maximum(_ellipse_sdf(x - sign * 32, y - 78, 24, 17), body + 8), MUSCLE_HU)
    pelvis = canvas.region((-np.inf,) * 3, (np.inf, np.inf, 115))
    if pelvis is not None:  # gluteal muscles
        pelvis_slices, (x, y, z) = pelvis
        body = _superellipse_sdf(x, y, *BODY_SEMI_AXES_MM, power=2.6)
        for sign in (1, -1):
            gluteal = np.maximum(_ellipsoid_sdf(x, y, z, (sign * 80, 70, 40), (55, 28, 75)), body + 8)
            canvas.paint(pelvis_slices, gluteal, MUSCLE_HU)
    return cavity


def _paint_organs(canvas: _Canvas, cavity: np.ndarray, ids: Dict[str, int]) -> None:
    solid = (
        ("liver", (-62, 8, 285), (82, 80, 52), (1.0, 0.0), LIVER_HU),
        ("spleen", (95, 48, 292), (20, 36, 38), (0.6, 0.8), SPLEEN_HU),
        ("kidney_left", (72, 48, 232), (22, 26, 45), (0.8, -0.6), KIDNEY_HU),
        ("kidney_right", (-72, 48, 228), (22, 26, 45), (0.8, 0.6), KIDNEY_HU),
    )
    for name, center, semi, axis, hu in solid:
        region = canvas.region(np.subtract(center, max(semi) + 3), np.add(center, max(semi) + 3))
        if region is not None:
            slices, (x, y, z) = region
            sdf = np.maximum(_ellipsoid_sdf(x, y, z, center, semi, axis), cavity[:, slices[1], slices[2]])
            canvas.paint(slices, sdf, hu, ids[name])


def _paint_skeleton(canvas: _Canvas, ids: Dict[str, int]) -> None:
    body_y, canal_y = 38.0, 62.0
    slices, (x, y, z) = canvas.region((-50, 15, 100), (50, 100, 330)) or canvas.everywhere()
    disc = np.maximum(_ellipse_sdf(x, y - body_y, 22, 17), np.abs(z - 225) - 115)
    canvas.paint(slices, disc, DISC_HU)  # discs: the column between vertebral bodies
    for index, bottom in enumerate((115, 155, 195, 235, 275)):
        top, center = bottom + 31, bottom + 15.5
        region = canvas.region((-50, 15, bottom - 3), (50, 100, top + 3))
        if region is None:
            continue
        slices, (x, y, z) = region
        vertebral_body = _ellipse_sdf(x, y - body_y, 22, 17)
        arch = np.maximum(np.hypot(x, y - canal_y) - 15, -(np.hypot(x, y - canal_y) - 8))
        spinous = _box_sdf(x, y, z, (0, canal_y + 22, center), (4, 14, 12))
        transverse = _box_sdf(x, y, z, (0, canal_y - 6, center), (42, 5, 6))
        parts = np.minimum(np.minimum(vertebral_body, arch), np.minimum(spinous, transverse))
        _paint_bone(canvas, slices, np.maximum(parts, np.abs(z - center) - 15.5), ids[f"vertebrae_L{5 - index}"])
    region = canvas.region((-60, 30, 15), (60, 100, 120))
    if region is not None:  # sacrum: wide at S1, thinner, curving posteriorly then forwards to the tip
        slices, (x, y, z) = region
        height = np.clip((z - 20) / 95, 0, 1)
        sacrum = _ellipse_sdf(x, y - (body_y + 42 - 30 * height**2 + 12 * np.sin(np.pi * height)),
                              15 + 35 * height, 8 + 10 * height)
        _paint_bone(canvas, slices, np.maximum(sacrum, np.abs(z - 67.5) - 47.5), ids["sacrum"])
    for side, sign in (("left", 1), ("right", -1)):
        region = canvas.region((sign * 88 - 60, -20, -5), (sign * 88 + 60, 100, 140))
        if region is None:
            continue
        slices, (x, y, z) = region
        wing = _ellipsoid_sdf(x, y, z, (sign * 88, 42, 92), (58, 8, 42), (sign * 0.62, -0.78))
        _paint_bone(canvas, slices, wing, ids[f"hip_{side}"], cortex_mm=2.0)
        head = np.hypot(np.hypot(x - sign * 88, y - 10), z - 22) - 23
        _paint_bone(canvas, slices, head, ids[f"femur_{side}"])


def _paint_bladder(canvas: _Canvas, ids: Dict[str, int]) -> None:
    center, semi = (0, -45, 55), (48, 33, 34)
    region = canvas.region(np.subtract(center, 52), np.add(center, 52))
    if region is None:
        return
    slices, (x, y, z) = region
    sdf = _ellipsoid_sdf(x, y, z, center, semi)
    canvas.paint(slices, sdf, WALL_HU, ids["urinary_bladder"])
    canvas.paint(slices, sdf + 3.0, URINE_HU)


def _paint_tumor(canvas: _Canvas, colon: _Tube, rng: np.random.Generator, colon_id: int) -> np.ndarray:
    """Eccentric, lobulated thickening of the left-anterior rectal wall; returns the tumor mask."""
    points, (radius,) = _resample(np.asarray(colon.points), [colon.radius])
    rectal = np.flatnonzero((points[:, 2] > 45) & (points[:, 2] < 85) & (np.abs(points[:, 0]) < 15))
    i = int(rectal[np.argmin(np.abs(points[rectal, 2] - 62))])
    center, axis = points[i], points[min(i + 2, len(points) - 1)] - points[max(i - 2, 0)]
    axis /= np.linalg.norm(axis)
    outward = np.array([0.7, -0.7, 0.0])  # patient's left and anterior
    outward -= (outward @ axis) * axis
    outward /= np.linalg.norm(outward)
    tangent = np.cross(axis, outward)
    outer_radius = float(radius[i])
    tumor_center = center + (outer_radius - 2.0) * outward
    semi = (14.0, 24.0, 27.0)  # radial, around the wall, along the rectum (mm)
    tumor = np.zeros(canvas.ct.shape, dtype=np.uint8)
    region = canvas.region(tumor_center - max(semi) - 5, tumor_center + max(semi) + 5)
    if region is None:  # outside the field of view
        return tumor
    slices, (x, y, z) = region
    p = [x - tumor_center[0], y - tumor_center[1], z - tumor_center[2]]
    u = sum(c * o for c, o in zip(p, outward))
    v = sum(c * o for c, o in zip(p, tangent))
    w = sum(c * o for c, o in zip(p, axis))
    k0 = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2)
    phases = rng.uniform(0, 2 * np.pi, 3)
    lobulation = 1 + 0.12 * np.sin(3 * np.arctan2(v, u) + phases[0]) * np.cos(2 * w / semi[2] + phases[1])
    ellipsoid = (k0 / lobulation - 1) * min(semi)
    # Radial distance from the local rectal axis: the tumor bulges at most 5 mm beyond the wall.
    d = [c + o for c, o in zip(p, tumor_center - center)]
    along = sum(c * a for c, a in zip(d, axis))
    radial = np.sqrt(sum((c - along * a) ** 2 for c, a in zip(d, axis)))
    sdf = np.maximum(ellipsoid, radial - (outer_radius + 5.0))
    canvas.paint(slices, sdf, TUMOR_HU, colon_id)
    tumor[slices][np.broadcast_to(sdf <= 0, tumor[slices].shape)] = 1
    return tumor


def _label_ids(names: Sequence[str]) -> Dict[str, int]:
    """TotalSegmentator v2 ``total`` ids by name, from TotalSegmentator's own class map."""
    from OrganGuidanceLib.labels import totalsegmentator_convention

    by_name = {name: value for value, name in totalsegmentator_convention().labels.items()}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"phantom: TotalSegmentator's class map has no label named {missing}")
    return {name: by_name[name] for name in names}


def _orient(array: np.ndarray, flips: Sequence[bool]) -> np.ndarray:
    """Flip the x/y/z index axes where the requested direction points against LPS."""
    for axis_xyz, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis=2 - axis_xyz)
    return np.ascontiguousarray(array)


def make_abdominal_phantom(
    shape_zyx: Tuple[int, int, int] = (64, 128, 128),
    spacing_xyz: Tuple[float, float, float] = (2.75, 2.75, 5.0),
    seed: int = 0,
    direction: Optional[np.ndarray] = None,
) -> Phantom:
    """Generate the phantom; the anatomy is fixed in millimetres and a smaller field of view clips it.

    ``direction``: 3x3 diagonal of +-1 (e.g. ``diag(-1, -1, 1)`` as NIfTI files stored in RAS
    order have); the anatomy stays where it is in physical (LPS) space, the arrays are flipped.
    """
    shape_zyx = tuple(int(n) for n in shape_zyx)  # type: ignore[assignment]
    if len(shape_zyx) != 3 or min(shape_zyx) < 2:
        raise ValueError(f"phantom: shape {shape_zyx} must be 3 sizes of at least 2 voxels (z, y, x)")
    direction_matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    if not (np.allclose(direction_matrix, np.diag(np.diag(direction_matrix))) and np.allclose(np.abs(np.diag(direction_matrix)), 1)):
        raise ValueError(f"phantom: direction must be diagonal with entries +-1, got {direction_matrix.tolist()}")
    rng = np.random.default_rng(seed)
    gi_tubes = _gi_tubes(rng)
    other_tubes = _vessel_and_muscle_tubes()
    names = [t.organ for t in gi_tubes + other_tubes if t.organ] + [
        "liver", "spleen", "kidney_left", "kidney_right", "urinary_bladder", "sacrum",
        *(f"vertebrae_L{i}" for i in range(1, 6)), "hip_left", "hip_right", "femur_left", "femur_right",
    ]
    ids = _label_ids(names)

    canvas = _Canvas(shape_zyx, spacing_xyz)  # type: ignore[arg-type]
    cavity = _paint_body(canvas)
    _paint_organs(canvas, cavity, ids)
    for tube in other_tubes:
        _paint_tube(canvas, tube, ids[tube.organ] if tube.organ else None)
    _paint_skeleton(canvas, ids)
    _paint_bladder(canvas, ids)
    for tube in gi_tubes:  # last: bowel labels are complete (what the OOI is built from)
        _paint_tube(canvas, tube, ids[tube.organ] if tube.organ else None)
    colon = next(t for t in gi_tubes if t.organ == "colon")
    tumor = _paint_tumor(canvas, colon, rng, ids["colon"])
    if not tumor.any():
        raise ValueError(f"phantom: the field of view {shape_zyx} x {spacing_xyz} mm does not reach the rectal tumor")

    canvas.ct += rng.normal(0.0, NOISE_HU, size=canvas.ct.shape).astype(np.float32)
    ct = np.clip(np.rint(canvas.ct), -1024, 3071).astype(np.int16)

    flips = [value < 0 for value in np.diag(direction_matrix)]
    corner = np.array([axis[-1] if flip else axis[0] for axis, flip in zip((canvas.x, canvas.y, canvas.z), flips)])
    geometry = dict(spacing=tuple(spacing_xyz), origin=tuple(corner), direction=direction_matrix)
    present = {int(v) for v in np.unique(canvas.labels) if v}
    return Phantom(
        ct=Image(_orient(ct, flips), name="synthetic abdominal CT phantom", **geometry),  # type: ignore[arg-type]
        labels=Image(_orient(canvas.labels, flips), name="phantom labels (TotalSegmentator v2)", **geometry),  # type: ignore[arg-type]
        tumor=Image(_orient(tumor, flips), name="phantom tumor", **geometry),  # type: ignore[arg-type]
        label_names={value: name for name, value in ids.items() if value in present},
    )

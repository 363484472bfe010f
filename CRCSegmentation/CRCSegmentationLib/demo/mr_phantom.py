"""A synthetic sagittal T2-weighted MRI of the male pelvis with a rectum and a rectal tumor.

RCSegNeXt (§3.1) segments the rectum and the rectal tumor on sagittal T2 MRI: thick slices
(Dataset A: 18..24 slices, median spacing 4.0 x 0.875 x 0.875 mm), labels background 0,
rectum 1, tumor 2. The tests, the demo and the training recipe need such a scan that anyone
can generate offline and whose labels are known exactly; this module paints one.

Anatomy (painter's algorithm over signed-distance primitives in mm, anti-aliased over about
a voxel in-plane; every slice is the mean of ``subslices`` thin sub-slices, so a 4 mm slice
averages what it cuts through, as a real slice profile does). Patient LPS coordinates: x to
the patient's left, y posterior, z superior; the patient lies supine (gravity is +y):

- body outline (skin, subcutaneous fat) with air outside, in front, behind and below the
  perineum at the midline (the natal cleft); pelvic fat inside (bright on T2);
- sacrum and coccyx: a band curving along the sacral hollow (concave anteriorly, about
  105 mm radius), dark cortex around intermediate marrow; pubic bone in front;
- pelvic muscles (dark-intermediate): rectus abdominis, the muscles behind the sacrum,
  gluteus maximus (lateral slices), the levator ani funnel and the external anal sphincter;
- urinary bladder in front (very bright urine, thin wall); the prostate below it (bright
  peripheral zone, intermediate central gland); small-bowel loops above the bladder;
- the rectum: a curved tube along the sacral curve from the anorectal junction (ARJ) up to
  the rectosigmoid junction, continued below by the anal canal (collapsed lumen, thick
  sphincter wall) and above by the sigmoid (leaving the field of view). Wall 3-4 mm
  (intermediate), lumen content mixed: gel/fluid (bright) in the dependent part, gas (dark)
  above an air-fluid level. The mesorectal fat around it is bounded by the thin dark
  mesorectal fascia and holds a few lymph nodes (intermediate, like the tumor);
- the tumor: a thickened, lobulated segment of the rectal wall over part of the
  circumference, bulging into the lumen and a little into the mesorectal fat (T3),
  intermediate-high signal with a texture. Its intensity overlaps the nodes, the prostate,
  the marrow and the wall-fluid partial volume: it is found by shape and place, not by a
  threshold.

Signal: arbitrary scanner units 0..~1500 (fat ~1000, urine ~1400, wall ~450, tumor ~650,
muscle ~250, air ~0), times a smooth receive-coil bias field, with Rician noise (magnitude
of complex Gaussian noise: air is ~15, never negative). Nothing here looks like a CT.

Labels: rectum 1 = wall + lumen of the rectum between the ARJ and the rectosigmoid junction
(the anal canal and the sigmoid are background); tumor 2 overwrites the rectum where they
meet. The seed varies the sacral curve, the rectal course and calibre, the fill level, the
bladder, the nodes and the tumor's place, size, circumference, thickness and lobulation.

Axis conventions (``thick_axis``). ``shape`` is ``(slices, rows, columns)`` of a sagittal
series: slices run patient right-left (the thick axis), rows superior to inferior, columns
anterior to posterior; default ``(18, 192, 256)`` = 72 x 168 x 224 mm, the fewest slices of
RCSegNeXt's Dataset A, rows and columns enough for the pelvis with air around it.

- ``"acquisition"`` (default): stored as a scanner stores a sagittal series. The array is
  ``(slices, rows, columns)``; array axis 0 (ITK index k) is the slice axis, 4 mm, along the
  patient's right (direction column (-1, 0, 0)); ITK index i (columns) runs posterior
  (0, 1, 0), index j (rows) inferior (0, 0, -1). ITK spacing (0.875, 0.875, 4.0).
- ``"resampled"``: the same voxels reordered as a tool stores them after reorienting to
  LPS: identity direction, array ``(rows, columns, slices)`` = (S-I, A-P, L-R) with z
  increasing superior; the thick L-R axis is ITK x = array axis 2, ITK spacing
  (4.0, 0.875, 0.875). No interpolation: both variants describe the same physical anatomy.

nnU-Net puts the axis of the largest spacing first (``transpose_forward``), so a network
sees the thick axis first in both variants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

from OrganGuidanceLib.image import Image

THICK_AXES = ("acquisition", "resampled")
DEFAULT_SHAPE = (18, 192, 256)  # (slices L-R, rows S-I, columns A-P)
IN_PLANE_MM = 0.875  # RCSegNeXt §3.1, Dataset A median spacing [4.000, 0.875, 0.875]
SLICE_MM = 4.0
FOV_CENTER_MM = (0.0, 5.0, 58.0)  # LPS point the field of view is centred on (the anatomy is fixed in mm)
# Direction of a sagittal series (ITK columns are the physical directions of index i, j, k): columns run
# posterior, rows inferior, slices to the patient's right: DICOM ImageOrientationPatient (0,1,0, 0,0,-1).
SAGITTAL_DIRECTION = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

LABELS = {"background": 0, "rectum": 1, "tumor": 2}

# Tissue classes of ``MRPhantom.tissues`` (what is where, for tests and QA figures).
TISSUES: Dict[str, int] = {
    "air": 0, "skin": 1, "fat": 2, "muscle": 3, "bone_cortex": 4, "bone_marrow": 5, "bladder_wall": 6,
    "urine": 7, "rectal_wall": 8, "lumen_fluid": 9, "lumen_gas": 10, "tumor": 11, "anal_canal": 12,
    "prostate": 13, "lymph_node": 14, "fascia": 15, "bowel": 16,
}

# T2-weighted fast spin echo signal, arbitrary scanner units (before the bias field and noise).
T2_SIGNAL: Dict[str, float] = {
    "air": 0.0, "skin": 550.0, "subcutaneous_fat": 1000.0, "fat": 950.0, "muscle": 250.0,
    "bone_cortex": 60.0, "bone_marrow": 600.0, "bladder_wall": 380.0, "urine": 1400.0,
    "rectal_wall": 450.0, "lumen_fluid": 1150.0, "lumen_gas": 15.0, "tumor": 650.0,
    "anal_canal": 330.0, "anal_mucosa": 520.0, "prostate_peripheral": 720.0, "prostate_central": 430.0,
    "lymph_node": 560.0, "fascia": 330.0, "bowel_wall": 450.0, "bowel_content": 900.0,
}
NOISE_SIGMA = 12.0  # Gaussian sigma of each complex channel: Rician air ~15 (about 1.3 % of fat)
SKIN_MM, SUBCUTANEOUS_FAT_MM = 1.5, 12.0
BODY_SEMI_AXES_MM = (165.0, 100.0)  # left-right, anterior-posterior half widths at the pelvis
BODY_CENTER_Y_MM = 5.0


@dataclass
class MRPhantom:
    image: Image  # int16 T2-like signal, 0..~1500
    labels: Image  # uint8: 0 background, 1 rectum, 2 tumor
    tissues: Image  # uint8 tissue classes (``TISSUES``), same grid
    thick_axis: str  # "acquisition" or "resampled"

    @property
    def rectum(self) -> Image:
        """Rectum 0/1 (without the tumor)."""
        return self.labels.with_array((self.labels.array == LABELS["rectum"]).astype(np.uint8), "phantom rectum")

    @property
    def tumor(self) -> Image:
        return self.labels.with_array((self.labels.array == LABELS["tumor"]).astype(np.uint8), "phantom tumor")


# --- the canvas: LPS-ordered arrays (z, y, x) with sub-slices along x ---------------------------
class _Canvas:
    """Signal, tissue and label arrays on an identity-direction grid; x is sampled ``subslices`` times per slice."""

    def __init__(self, slices: int, rows: int, columns: int, in_plane_mm: float, slice_mm: float,
                 subslices: int) -> None:
        cx, cy, cz = FOV_CENTER_MM
        self.x_slices = cx + (np.arange(slices) - (slices - 1) / 2) * slice_mm
        offsets = (np.arange(subslices) - (subslices - 1) / 2) * slice_mm / subslices
        self.x = (self.x_slices[:, None] + offsets[None, :]).ravel()
        self.y = cy + (np.arange(columns) - (columns - 1) / 2) * in_plane_mm
        self.z = cz + (np.arange(rows) - (rows - 1) / 2) * in_plane_mm
        self.subslices = subslices
        shape = (rows, columns, self.x.size)
        self.signal = np.zeros(shape, dtype=np.float32)
        self.tissue = np.zeros(shape, dtype=np.uint8)
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.soft_mm = float(in_plane_mm)

    def region(self, lower: Sequence[float], upper: Sequence[float]):
        """(slices, (x, y, z) broadcastable coordinates) of the voxels in the box, or None."""
        slices = []
        for axis, low, high in zip((self.z, self.y, self.x), lower[::-1], upper[::-1]):
            start, stop = int(np.searchsorted(axis, low, "left")), int(np.searchsorted(axis, high, "right"))
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        z, y, x = (axis[s] for axis, s in zip((self.z, self.y, self.x), slices))
        return tuple(slices), (x[None, None, :], y[None, :, None], z[:, None, None])

    def everywhere(self):
        return self.region((-np.inf,) * 3, (np.inf,) * 3)

    def paint(self, slices, sdf: np.ndarray, signal, tissue: Optional[str] = None, label: Optional[int] = None) -> None:
        """Blend ``signal`` in where ``sdf`` < 0 (partial volume over about a voxel); set tissue/label inside."""
        view = self.signal[slices]
        sdf = np.broadcast_to(sdf, view.shape)
        alpha = np.clip(0.5 - sdf / self.soft_mm, 0.0, 1.0)
        view += alpha * (np.asarray(signal, dtype=np.float32) - view)
        inside = sdf <= 0
        if tissue is not None:
            self.tissue[slices][inside] = TISSUES[tissue]
        if label is not None:
            self.labels[slices][inside] = label


# --- primitives (signed distances in mm, negative inside) ---------------------------------------
def _ellipsoid_sdf(x, y, z, center, semi) -> np.ndarray:
    """Approximate distance to an axis-aligned ellipsoid (exact near its surface)."""
    px, py, pz = x - center[0], y - center[1], z - center[2]
    a, b, c = semi
    k0 = np.sqrt((px / a) ** 2 + (py / b) ** 2 + (pz / c) ** 2)
    k1 = np.sqrt((px / a**2) ** 2 + (py / b**2) ** 2 + (pz / c**2) ** 2)
    return np.where(k1 > 0, k0 * (k0 - 1) / np.maximum(k1, 1e-9), -min(semi)).astype(np.float32)


def _superellipse_sdf(u, v, a: float, b: float, power: float) -> np.ndarray:
    """First-order distance to |u/a|^p + |v/b|^p = 1: a boxy torso cross-section."""
    au, av = np.abs(u) / a + 1e-9, np.abs(v) / b + 1e-9
    total = au**power + av**power
    common = total ** (1 / power - 1)
    gradient = np.hypot(common * au ** (power - 1) / a, common * av ** (power - 1) / b)
    return ((total ** (1 / power) - 1) / gradient).astype(np.float32)


def _ellipsoid(canvas: _Canvas, center, semi, margin: float = 3.0):
    """(slices, sdf) of an ellipsoid over its bounding box, or None outside the field of view."""
    region = canvas.region(np.subtract(center, np.add(semi, margin)), np.add(center, np.add(semi, margin)))
    if region is None:
        return None
    slices, (x, y, z) = region
    return slices, _ellipsoid_sdf(x, y, z, center, semi)


# --- anatomy parameters --------------------------------------------------------------------------
@dataclass
class _TumorShape:
    """A wall tumor in the rectum's own coordinates (arc length s from the anal verge, angle phi)."""

    s: float  # centre, mm from the anal verge
    half_length: float  # mm along the rectum
    phi: float  # centre angle: 0 left, pi/2 posterior, -pi/2 anterior
    half_arc: float  # radians: pi/2 covers half the circumference
    inward: float  # mm of thickening into the lumen at the centre
    outward: float  # mm beyond the outer wall into the mesorectal fat (T3)
    phases: Tuple[float, float, float, float]  # of the lobulation


@dataclass
class _Anatomy:
    """What the seed draws: one patient."""

    arc_center: np.ndarray  # (y, z) of the sacral hollow's centre of curvature
    arc_radius: float  # anterior sacral surface
    centerline: np.ndarray  # dense (n, 3) points from the anal verge upwards, 0.5 mm apart
    arc_length: np.ndarray  # (n,) mm from the anal verge
    outer_radius: np.ndarray  # (n,) outer wall radius
    wall_mm: np.ndarray  # (n,) wall (anal canal: sphincter) thickness
    s_arj: float  # anorectal junction: the rectum label starts here
    s_rs: float  # rectosigmoid junction: and ends here
    fill_level: float  # air-fluid level, in lumen radii from the centreline towards anterior (-y)
    bladder_center: Tuple[float, float, float]
    bladder_semi: Tuple[float, float, float]
    nodes: List[Tuple[float, float, float, float]]  # (s, phi, radial fraction, radius)
    loops: List[Tuple[float, float, float, float]]  # small bowel: (y, z, radius, tilt)
    tumor: _TumorShape


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    radius = float(rng.uniform(98.0, 112.0))
    center = np.array([-55.0, 75.0]) + rng.normal(0.0, 2.5, 2)
    offset = 30.0  # posterior mesorectal fat + rectal radius between the sacrum and the rectal axis

    def on_arc(theta: float, lateral: float) -> List[float]:
        r = radius - offset
        return [lateral, center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)]

    lateral = rng.normal(0.0, 3.0, 5)  # the rectum's lateral flexures
    ampulla = float(rng.uniform(0.85, 1.15))
    wall = float(rng.uniform(3.0, 4.0))
    # (point, outer radius, wall): anal verge (below the skin) .. ARJ .. rectum along the sacrum .. sigmoid
    controls = [
        ([0.0, 14.0, -22.0], 9.0, 7.5), ([0.0, 5.0, 0.0], 9.5, 7.5), ([0.0, -2.0, 18.0], 12.0, 4.5),
        (on_arc(-0.62, lateral[0]), 19.0 * ampulla, wall), (on_arc(-0.35, lateral[1]), 20.0 * ampulla, wall),
        (on_arc(0.0, lateral[2]), 17.0 * ampulla, wall), (on_arc(0.33, lateral[3]), 15.0, wall),
        (on_arc(0.58, lateral[4]), 13.5, wall),
        ([6.0, -8.0, 130.0], 12.5, wall), ([12.0, -22.0, 142.0], 12.0, wall), ([18.0, -34.0, 156.0], 12.0, wall),
    ]
    points = np.array([p for p, _, _ in controls], dtype=float)
    points[3:8, 1:] += rng.normal(0.0, 2.0, (5, 2))
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    spline = CubicSpline(chord, points, axis=0, bc_type="natural")
    fine = np.linspace(0.0, chord[-1], int(chord[-1] / 0.1) + 1)
    fine_points = spline(fine)
    fine_s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(fine_points, axis=0), axis=1))])
    dense_s = np.arange(0.0, fine_s[-1], 0.5)
    dense_t = np.interp(dense_s, fine_s, fine)
    dense = spline(dense_t)
    control_s = np.interp(chord, fine, fine_s)
    outer = np.interp(dense_s, control_s, [r for _, r, _ in controls])
    walls = np.interp(dense_s, control_s, [w for _, _, w in controls])
    s_arj, s_rs = float(control_s[2]), float(control_s[7])

    bladder_semi = (float(rng.uniform(40, 50)), float(rng.uniform(24, 31)), float(rng.uniform(24, 31)))
    bladder_center = (0.0, -47.0 - (bladder_semi[1] - 27) + rng.normal(0, 2), 56.0 + (bladder_semi[2] - 27))
    nodes = [(float(rng.uniform(s_arj + 15, s_rs - 10)), float(rng.uniform(-np.pi, np.pi)),
              float(rng.uniform(0.35, 0.75)), float(rng.uniform(2.0, 3.5))) for _ in range(int(rng.integers(2, 6)))]
    loop_top = bladder_center[2] + bladder_semi[2]
    loops = [(float(rng.uniform(-80, -45)), float(rng.uniform(loop_top + 15, 138)), float(rng.uniform(9, 12)),
              float(rng.uniform(-0.3, 0.3))) for _ in range(3)]

    half_length = float(rng.uniform(11.0, 25.0))
    low, high = s_arj + half_length + 4.0, s_rs - half_length - 6.0
    tumor = _TumorShape(
        s=float(rng.uniform(low, max(low, high))), half_length=half_length,
        phi=float(rng.uniform(-np.pi, np.pi)), half_arc=float(rng.uniform(0.35, 1.0) * np.pi),
        inward=float(rng.uniform(4.0, 10.0)), outward=float(rng.uniform(1.0, 5.0)),
        phases=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 4)),  # type: ignore[arg-type]
    )
    return _Anatomy(center, radius, dense, dense_s, outer, walls, s_arj, s_rs,
                    float(rng.uniform(-0.6, 0.5)), bladder_center, bladder_semi, nodes, loops, tumor)


# --- the tube's local coordinates -----------------------------------------------------------------
@dataclass
class _TubeFrame:
    """Per voxel: arc length s, distance r from the rectal axis, angle phi around it (0 left, +pi/2 posterior)."""

    s: np.ndarray  # (nz, ny, 1)
    r: np.ndarray  # (nz, ny, nx)
    phi: np.ndarray  # (nz, ny, nx)
    dy: np.ndarray  # (nz, ny, 1): y - y of the nearest axis point (supine: +y is dependent)
    outer: np.ndarray  # (nz, ny, 1)
    wall: np.ndarray  # (nz, ny, 1)


def _tube_frame(canvas: _Canvas, anatomy: _Anatomy) -> _TubeFrame:
    """Nearest axis point found in the sagittal (y, z) plane: the rectal axis runs in the sagittal plane
    (its small lateral flexures shift the cross-section sideways), so one 2D search serves every slice."""
    yy, zz = np.meshgrid(canvas.y, canvas.z)  # (nz, ny)
    tree = cKDTree(anatomy.centerline[:, 1:])
    _, index = tree.query(np.stack([yy.ravel(), zz.ravel()], axis=1))
    index = index.reshape(yy.shape)
    points = anatomy.centerline
    tangents = np.gradient(points, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    t = tangents[index]  # (nz, ny, 3)
    c = points[index]
    qy, qz = yy - c[..., 1], zz - c[..., 2]
    along = qy * t[..., 1] + qz * t[..., 2]
    inplane_t = np.hypot(t[..., 1], t[..., 2]) + 1e-9
    normal = (qy * t[..., 2] - qz * t[..., 1]) / inplane_t  # in-plane normal, posterior for an upward axis
    s = anatomy.arc_length[index] + along
    dx = canvas.x[None, None, :] - c[..., 0:1]
    normal = normal[..., None]
    r = np.sqrt(dx * dx + normal * normal).astype(np.float32)
    phi = np.arctan2(normal, dx).astype(np.float32)
    return _TubeFrame(
        s=s[..., None].astype(np.float32), r=r, phi=phi, dy=qy[..., None].astype(np.float32),
        outer=anatomy.outer_radius[index][..., None].astype(np.float32),
        wall=anatomy.wall_mm[index][..., None].astype(np.float32),
    )


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


# --- painting -------------------------------------------------------------------------------------
def _paint_body(canvas: _Canvas, x, y, z) -> np.ndarray:
    """Skin, subcutaneous fat and pelvic fat; returns the body's SDF (air outside)."""
    body = _superellipse_sdf(x, y - BODY_CENTER_Y_MM, *BODY_SEMI_AXES_MM, power=2.4)
    # Below: the perineum at the midline, rising posteriorly into the natal cleft; the buttocks
    # and thighs fill in laterally (the inferior surface drops with |x|).
    y_flat = np.clip(y - 10.0, 0.0, None)
    z_bottom_mid = -16.0 + 0.38 * y_flat
    width = 26.0 - 16.0 * np.clip(y_flat / 95.0, 0.0, 1.0)
    z_bottom = z_bottom_mid - 60.0 * (x / width) ** 2
    body = np.maximum(body, (z_bottom - z) * 0.8).astype(np.float32)
    slices = (slice(None),) * 3
    canvas.paint(slices, body, T2_SIGNAL["skin"], "skin")
    canvas.paint(slices, body + SKIN_MM, T2_SIGNAL["subcutaneous_fat"], "fat")
    canvas.paint(slices, body + SKIN_MM + SUBCUTANEOUS_FAT_MM, T2_SIGNAL["fat"], "fat")
    return body


def _sacral_polar(anatomy: _Anatomy, y, z):
    dy, dz = y - anatomy.arc_center[0], z - anatomy.arc_center[1]
    return np.hypot(dy, dz), np.arctan2(dz, dy)


def _paint_muscles_and_bones(canvas: _Canvas, anatomy: _Anatomy, body: np.ndarray, x, y, z) -> None:
    inner = body + SKIN_MM + SUBCUTANEOUS_FAT_MM  # < 0 inside the subcutaneous fat
    everywhere = (slice(None),) * 3
    # Rectus abdominis above the pubis, just inside the anterior subcutaneous fat.
    front = -(BODY_SEMI_AXES_MM[1] - BODY_CENTER_Y_MM) + SKIN_MM + SUBCUTANEOUS_FAT_MM
    rectus = np.maximum(np.maximum(np.abs(y - (front + 5.5)) - 5.0, 36.0 - z), np.abs(x) - 45.0)
    canvas.paint(everywhere, np.maximum(rectus, inner), T2_SIGNAL["muscle"], "muscle")
    # Sacrum and coccyx: a band behind the arc, thick at S1, thin at the coccygeal tip; narrower caudally.
    r, theta = _sacral_polar(anatomy, y, z)
    low, high = -0.62, 0.78
    thickness = np.interp(theta, [low, 0.0, high], [9.0, 24.0, 46.0])
    half_width = np.interp(theta, [low, 0.0, high], [11.0, 38.0, 58.0])
    behind = anatomy.arc_radius + thickness
    # Paraspinal and gluteal muscle: a 16 mm layer behind the sacrum, inside the subcutaneous fat.
    posterior = np.maximum(np.maximum(r - behind - 16.0, behind - 1.0 - r), np.maximum((low + 0.05 - theta) * r, inner))
    canvas.paint(everywhere, posterior.astype(np.float32), T2_SIGNAL["muscle"], "muscle")
    for sign in (1.0, -1.0):  # gluteus maximus beside and behind the anal canal (lateral slices)
        gluteus = _ellipsoid(canvas, (sign * 44.0, 68.0, 12.0), (26.0, 30.0, 42.0))
        if gluteus is not None:
            slices, sdf = gluteus
            canvas.paint(slices, np.maximum(sdf, inner[slices]), T2_SIGNAL["muscle"], "muscle")
    sacrum = np.maximum(np.maximum(anatomy.arc_radius - r, r - behind), np.maximum((low - theta) * r, (theta - high) * r))
    sacrum = np.maximum(sacrum, np.abs(x) - half_width).astype(np.float32)
    canvas.paint(everywhere, sacrum, T2_SIGNAL["bone_cortex"], "bone_cortex")
    canvas.paint(everywhere, sacrum + 2.0, T2_SIGNAL["bone_marrow"], "bone_marrow")
    pubis = _ellipsoid(canvas, (0.0, -70.0, 12.0), (42.0, 11.0, 20.0))
    if pubis is not None:
        slices, sdf = pubis
        canvas.paint(slices, sdf, T2_SIGNAL["bone_cortex"], "bone_cortex")
        canvas.paint(slices, sdf + 2.0, T2_SIGNAL["bone_marrow"], "bone_marrow")
    # Levator ani: a funnel (cone shell, 5 mm) opening upwards around the anal canal's axis.
    verge, arj = anatomy.centerline[0], anatomy.centerline[int(np.searchsorted(anatomy.arc_length, anatomy.s_arj))]
    axis = (arj - verge) / np.linalg.norm(arj - verge)
    apex = arj - 22.0 * axis
    px, py, pz = x - apex[0], y - apex[1], z - apex[2]
    height = px * axis[0] + py * axis[1] + pz * axis[2]
    rho = np.sqrt(np.maximum((px * px + py * py + pz * pz) - height * height, 0.0))
    half_angle = np.deg2rad(52.0)
    cone = np.abs((rho - height * np.tan(half_angle)) * np.cos(half_angle)) - 2.5
    funnel = np.maximum(np.maximum(cone, 14.0 - height), np.maximum(height - 55.0, inner)).astype(np.float32)
    canvas.paint(everywhere, funnel, T2_SIGNAL["muscle"], "muscle")


def _paint_pelvic_organs(canvas: _Canvas, anatomy: _Anatomy, frame: _TubeFrame, texture: np.ndarray,
                         body: np.ndarray) -> None:
    everywhere = (slice(None),) * 3
    inner = body + SKIN_MM + SUBCUTANEOUS_FAT_MM
    # Small-bowel loops above the bladder: tubes crossing the slab (circles on sagittal slices).
    region = canvas.region((-np.inf, -np.inf, anatomy.bladder_center[2]), (np.inf, np.inf, np.inf))
    if region is not None:
        slices, (x, y, z) = region
        for loop_y, loop_z, radius, tilt in anatomy.loops:
            sdf = (np.hypot(y - loop_y - tilt * x, z - loop_z) - radius).astype(np.float32)
            sdf = np.maximum(sdf, inner[slices])
            canvas.paint(slices, sdf, T2_SIGNAL["bowel_wall"], "bowel")
            canvas.paint(slices, sdf + 2.5, T2_SIGNAL["bowel_content"] * (1 + 0.15 * texture[slices]), "bowel")
    # Mesorectal fascia: a thin dark envelope around the mesorectal fat, from just above the ARJ to the
    # peritoneal reflection; thicker fat posteriorly than anteriorly.
    sin_phi = np.sin(frame.phi)
    fat = 13.0 + 5.0 * np.clip(sin_phi, 0, None) - 7.0 * np.clip(-sin_phi, 0, None)
    taper = np.clip((frame.s - anatomy.s_arj) / 25.0, 0.25, 1.0)
    meso_radius = frame.outer + fat * taper
    span = np.maximum(anatomy.s_arj + 4.0 - frame.s, frame.s - (anatomy.s_rs - 8.0))
    fascia = np.maximum(np.abs(frame.r - meso_radius) - 0.6, span)
    canvas.paint(everywhere, np.maximum(fascia, inner), T2_SIGNAL["fascia"], "fascia")
    # Lymph nodes inside the mesorectal fat (intermediate signal, like the tumor).
    tangents = np.gradient(anatomy.centerline, axis=0)
    for s, phi, fraction, radius in anatomy.nodes:
        i = int(np.clip(np.searchsorted(anatomy.arc_length, s), 0, len(anatomy.arc_length) - 1))
        t = tangents[i] / np.linalg.norm(tangents[i])
        normal = np.array([0.0, t[2], -t[1]]) / (np.hypot(t[1], t[2]) + 1e-9)
        distance = anatomy.outer_radius[i] + 3.0 + fraction * 10.0 * (1.0 + 0.3 * np.sin(phi))
        center = anatomy.centerline[i] + distance * (np.cos(phi) * np.array([1.0, 0.0, 0.0]) + np.sin(phi) * normal)
        node = _ellipsoid(canvas, tuple(center), (radius, radius * 1.2, radius * 0.9))
        if node is not None:
            slices, sdf = node
            canvas.paint(slices, sdf, T2_SIGNAL["lymph_node"], "lymph_node")
    # Prostate below the bladder, in front of the anal canal: bright peripheral zone, darker central gland.
    prostate = _ellipsoid(canvas, (0.0, -31.0, 13.0), (22.0, 12.5, 16.0))
    if prostate is not None:
        slices, sdf = prostate
        canvas.paint(slices, sdf, T2_SIGNAL["prostate_peripheral"] * (1 + 0.1 * texture[slices]), "prostate")
        central = _ellipsoid(canvas, (0.0, -35.0, 16.0), (15.0, 8.5, 12.0))
        if central is not None:
            slices, sdf = central
            canvas.paint(slices, sdf, T2_SIGNAL["prostate_central"] * (1 + 0.1 * texture[slices]), "prostate")
    bladder = _ellipsoid(canvas, anatomy.bladder_center, anatomy.bladder_semi)
    if bladder is not None:
        slices, sdf = bladder
        canvas.paint(slices, sdf, T2_SIGNAL["bladder_wall"], "bladder_wall")
        canvas.paint(slices, sdf + 3.0, T2_SIGNAL["urine"], "urine")


def _tumor_sdf(anatomy: _Anatomy, frame: _TubeFrame) -> np.ndarray:
    """A lobulated wall thickening over part of the circumference: bulges inward (narrowing the lumen)
    and outward into the mesorectal fat; its footprint on the wall is an ellipse in (s, phi)."""
    p = anatomy.tumor
    phases = p.phases
    ds = (frame.s - p.s) / p.half_length
    dphi = _wrap(frame.phi - p.phi) / p.half_arc
    wobble = 1.0 + 0.18 * np.sin(3 * frame.phi + phases[0]) * np.cos(2.2 * ds + phases[1]) \
        + 0.1 * np.sin(5 * frame.phi + phases[2])
    footprint = 1.0 - (ds * ds + dphi * dphi) * wobble
    height = np.sqrt(np.clip(footprint, 0.0, 1.0))
    lobes = 1.0 + 0.25 * np.sin(4 * frame.phi + phases[3]) * np.sin(3.1 * ds + phases[0])
    lumen = frame.outer - frame.wall
    inner = np.maximum(lumen - p.inward * height * lobes, 1.2)
    outer = frame.outer + p.outward * height * lobes
    edge = -footprint * 0.5 * min(p.half_length, p.half_arc * 15.0)
    return np.maximum(np.maximum(inner - frame.r, frame.r - outer), edge).astype(np.float32)


def _paint_rectum(canvas: _Canvas, anatomy: _Anatomy, frame: _TubeFrame, texture: np.ndarray,
                  body: np.ndarray) -> None:
    everywhere = (slice(None),) * 3
    tube = np.maximum(frame.r - frame.outer, body)
    anal = frame.s < anatomy.s_arj
    rectum = (frame.s >= anatomy.s_arj) & (frame.s <= anatomy.s_rs)
    # External anal sphincter around the anal canal.
    sphincter = np.maximum(np.maximum(frame.r - frame.outer - 5.0, body), frame.s - anatomy.s_arj + 2.0)
    canvas.paint(everywhere, sphincter, T2_SIGNAL["muscle"], "muscle")
    wall_signal = np.where(anal, T2_SIGNAL["anal_canal"], T2_SIGNAL["rectal_wall"]).astype(np.float32)
    canvas.paint(everywhere, tube, wall_signal * (1 + 0.05 * texture), None)
    inside = np.broadcast_to(tube <= 0, canvas.tissue.shape)
    canvas.tissue[inside & np.broadcast_to(anal, inside.shape)] = TISSUES["anal_canal"]
    canvas.tissue[inside & ~np.broadcast_to(anal, inside.shape)] = TISSUES["rectal_wall"]
    lumen_radius = frame.outer - frame.wall
    lumen = tube + frame.wall
    fluid = frame.dy > -anatomy.fill_level * lumen_radius  # dependent (posterior) part below the air-fluid level
    content = np.where(fluid, T2_SIGNAL["lumen_fluid"], T2_SIGNAL["lumen_gas"])
    content = np.where(anal, T2_SIGNAL["anal_mucosa"], content).astype(np.float32)
    canvas.paint(everywhere, lumen, content, None)
    inside = np.broadcast_to(lumen <= 0, canvas.tissue.shape)
    kind = np.where(np.broadcast_to(anal, inside.shape), TISSUES["anal_canal"],
                    np.where(np.broadcast_to(fluid, inside.shape), TISSUES["lumen_fluid"], TISSUES["lumen_gas"]))
    canvas.tissue[inside] = kind[inside]
    canvas.labels[np.broadcast_to(tube <= 0, canvas.labels.shape) & np.broadcast_to(rectum, canvas.labels.shape)] = \
        LABELS["rectum"]
    tumor = np.maximum(_tumor_sdf(anatomy, frame), body)
    canvas.paint(everywhere, tumor, T2_SIGNAL["tumor"] * (1 + 0.12 * texture), "tumor", LABELS["tumor"])


def _smooth_noise(rng: np.random.Generator, shape, sigma_voxels) -> np.ndarray:
    """Zero-mean, unit-amplitude (about) smooth random field: tissue texture."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="wrap")
    return field / (3.0 * float(field.std()) + 1e-9)


def _bias_field(rng: np.random.Generator, x, y, z) -> np.ndarray:
    """Receive-coil sensitivity: brighter towards the anterior and posterior coil arrays, a gentle
    seeded gradient head-feet and left-right; 0.85..1.15."""
    depth = ((y - BODY_CENTER_Y_MM) / BODY_SEMI_AXES_MM[1]) ** 2
    gz, gx = rng.uniform(-0.05, 0.05, 2)
    field = 0.88 + 0.2 * np.clip(depth, 0.0, 1.2) + gz * (z - FOV_CENTER_MM[2]) / 80.0 + gx * x / 40.0
    return np.clip(field, 0.75, 1.25).astype(np.float32)


def _to_acquisition(array: np.ndarray) -> np.ndarray:
    """LPS-ordered (z up, y posterior, x left) -> sagittal series (slice to the right, row inferior, column posterior)."""
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1))[::-1, ::-1, :])


def make_sagittal_t2_phantom(
    seed: int = 0,
    shape: Tuple[int, int, int] = DEFAULT_SHAPE,
    in_plane_mm: float = IN_PLANE_MM,
    slice_mm: float = SLICE_MM,
    thick_axis: str = "acquisition",
    subslices: int = 3,
) -> MRPhantom:
    """Generate the sagittal T2 phantom (see the module docstring for anatomy and axes).

    ``shape``: (slices L-R, rows S-I, columns A-P) whatever ``thick_axis``; the anatomy is fixed
    in millimetres and the field of view (centred on ``FOV_CENTER_MM``) clips it. ``subslices``:
    thin sub-slices averaged into each slice (the slice profile; 1 turns it off).
    Raises ``ValueError`` when the field of view misses the tumor or the rectum.
    """
    if thick_axis not in THICK_AXES:
        raise ValueError(f"MR phantom: thick_axis {thick_axis!r}: choose one of {THICK_AXES}")
    slices, rows, columns = (int(n) for n in shape)
    if min(slices, rows, columns) < 2 or len(tuple(shape)) != 3:
        raise ValueError(f"MR phantom: shape {tuple(shape)} must be 3 sizes of at least 2 (slices, rows, columns)")
    if not (in_plane_mm > 0 and slice_mm > 0 and subslices >= 1):
        raise ValueError(f"MR phantom: spacings {in_plane_mm}, {slice_mm} mm and subslices {subslices} must be positive")
    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng)
    canvas = _Canvas(slices, rows, columns, float(in_plane_mm), float(slice_mm), int(subslices))
    _, (x, y, z) = canvas.everywhere()
    sub = canvas.subslices
    texture = _smooth_noise(rng, canvas.signal.shape, (2.0 / in_plane_mm, 2.0 / in_plane_mm, 2.0 * sub / slice_mm))

    body = _paint_body(canvas, x, y, z)
    _paint_muscles_and_bones(canvas, anatomy, body, x, y, z)
    frame = _tube_frame(canvas, anatomy)
    _paint_pelvic_organs(canvas, anatomy, frame, texture, body)
    _paint_rectum(canvas, anatomy, frame, texture, body)

    # Thin sub-slices -> 4 mm slices (the slice profile); tissue and labels at each slice's centre.
    nz, ny = canvas.signal.shape[:2]
    signal = canvas.signal.reshape(nz, ny, slices, sub).mean(axis=3)
    centre = sub // 2
    tissues = canvas.tissue[:, :, centre::sub]
    labels = canvas.labels[:, :, centre::sub]
    if not (labels == LABELS["tumor"]).any():
        raise ValueError(f"MR phantom: the field of view {tuple(shape)} x {in_plane_mm}/{slice_mm} mm misses the tumor")
    if not (labels == LABELS["rectum"]).any():
        raise ValueError(f"MR phantom: the field of view {tuple(shape)} misses the rectum")
    xs = canvas.x_slices[None, None, :]
    signal = signal * _bias_field(rng, xs, y, z)
    noise = rng.normal(0.0, NOISE_SIGMA, size=(2,) + signal.shape).astype(np.float32)
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)  # Rician: magnitude of a complex signal
    image = np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)

    spacing_lps = (float(slice_mm), float(in_plane_mm), float(in_plane_mm))
    if thick_axis == "resampled":
        geometry = dict(spacing=spacing_lps, origin=(canvas.x_slices[0], canvas.y[0], canvas.z[0]), direction=np.eye(3))
        arrays = (image, labels, tissues)
    else:
        # ITK index i -> columns (posterior), j -> rows (inferior), k -> slices (to the right).
        geometry = dict(spacing=(float(in_plane_mm), float(in_plane_mm), float(slice_mm)),
                        origin=(canvas.x_slices[-1], canvas.y[0], canvas.z[-1]), direction=SAGITTAL_DIRECTION.copy())
        arrays = tuple(_to_acquisition(a) for a in (image, labels, tissues))
    return MRPhantom(
        image=Image(arrays[0], name="synthetic sagittal T2 phantom", **geometry),  # type: ignore[arg-type]
        labels=Image(arrays[1], name="phantom labels (rectum 1, tumor 2)", **geometry),  # type: ignore[arg-type]
        tissues=Image(arrays[2], name="phantom tissues", **geometry),  # type: ignore[arg-type]
        thick_axis=thick_axis,
    )

"""Image analytics of the camera workers: tamper (tamper.py), motion in zones (motion.py),
arming schedules (schedule.py). numpy and OpenCV on small grey pictures: the luma plane
of a decoded frame, downscaled — never a colour conversion of the full frame."""
from __future__ import annotations

import av
import cv2
import numpy as np
from av.video.plane import VideoPlane

# Hundreds of cameras per process: parallelism comes from the cameras' threads, and
# OpenCV's own worker pool would only add hand-offs (and spinning) on pictures this small.
cv2.setNumThreads(1)


_PLANAR_YUV = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"})


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The frame's grey picture (H, W) uint8 — a view of the Y plane when the pixel
    format is planar YUV (no copy, no conversion). Called for every analysed frame: the
    Y plane alone (``frame.planes`` builds all three) and one array over it."""
    if frame.format.name in _PLANAR_YUV:
        plane = VideoPlane(frame, 0)
        return np.ndarray((plane.height, plane.width), np.uint8, plane, strides=(plane.line_size, 1))
    return frame.to_ndarray(format="gray")


def downscale(grey: np.ndarray, width: int) -> np.ndarray:
    """Halve the picture while it stays at least ``width`` wide: the result is between
    ``width`` and twice that. Exact halvings with INTER_AREA are OpenCV's fast path (a
    640→160 reduction costs 12 µs this way, 90 µs in one non-integer step); analyses
    compare a camera only with itself, so the exact size does not matter, only that it
    is the same every time."""
    out = grey
    h, w = out.shape[:2]
    while w >= 2 * width:
        h2, w2 = h // 2, w // 2
        out = cv2.resize(out[:2 * h2, :2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
        h, w = h2, w2
    return out if out is not grey else np.ascontiguousarray(grey)


def polygon_mask(polygons, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask (255 inside any polygon) for polygons in picture fractions."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for poly in polygons:
        pts = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in poly], np.int32)
        cv2.fillPoly(mask, [pts], 255)
    return mask


def keep_mask(masks, shape: tuple[int, int]) -> np.ndarray | None:
    """uint8 mask of the analysed pixels (255) with the ignored areas cut out; None when
    nothing is masked."""
    if not masks:
        return None
    return cv2.bitwise_not(polygon_mask(masks, shape))

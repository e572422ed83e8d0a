"""Pure-numpy scene generator for the simulated cameras.

Imported by two interpreters: the project venv (numpy 2.x) and Debian's
/usr/bin/python3 that runs the GstRtspServer script (numpy 1.24). So: numpy
and the standard library only, and nothing newer than numpy 1.24.

Frames are RGB ``uint8`` arrays of shape (height, width, 3).

Layout of a "street" frame (fractions of the frame height, normal view):
    0.00-0.45  sky (gradient + soft clouds)
    0.22-0.50  houses with windows, doors and brick texture (strong edges)
    0.50-0.66  pavement with tiles, poles
    0.66-0.96  road with lane dashes; the moving object crosses MOTION_BAND
Top-left rows: the timestamp strip (see ``draw_timestamp_strip``), like a
camera's OSD; analytics should mask ``strip_box()``.
"""

from __future__ import annotations

import time

import numpy as np

STATES = ("normal", "motion", "black", "blur", "shift", "dark", "bright", "freeze")
SCENES = ("street",)

# Vertical band (fractions of the frame height) crossed by the moving object
# in the "motion" state. Outside this band nothing moves in any state.
MOTION_BAND = (0.70, 0.88)
# The moving object crosses the whole frame in this many seconds.
CROSSING_SECONDS = 3.0

# ----------------------------------------------------------------------------
# Timestamp strip: wall-clock capture time (ms since epoch) as big binary
# blocks, robust to H.264 compression.
#   4 marker bits | 48 data bits (MSB first) | 8 CRC-8 bits  = 60 blocks
# Blocks are STRIP_BLOCK x STRIP_BLOCK px, laid left to right from (0, 0),
# wrapping to further block rows when the frame is narrower than 60 blocks.
# White (255) = 1, black (0) = 0.
STRIP_BLOCK = 8
STRIP_MARKER = (1, 0, 1, 1)
STRIP_DATA_BITS = 48
STRIP_BITS = len(STRIP_MARKER) + STRIP_DATA_BITS + 8


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _strip_layout(width: int, block: int) -> tuple[int, int]:
    cols = width // block
    if cols < 8:
        raise ValueError(f"frame width {width} too small for the timestamp strip")
    rows = -(-STRIP_BITS // cols)
    return cols, rows


def strip_box(width: int, height: int, block: int = STRIP_BLOCK) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the region the timestamp strip may cover (mask it out)."""
    cols, rows = _strip_layout(width, block)
    return 0, 0, min(STRIP_BITS, cols) * block, rows * block


def _strip_bits(ms: int) -> np.ndarray:
    ms = int(ms) & ((1 << STRIP_DATA_BITS) - 1)
    data = ms.to_bytes(STRIP_DATA_BITS // 8, "big")
    value = (ms << 8) | _crc8(data)
    payload = [(value >> (STRIP_DATA_BITS + 8 - 1 - i)) & 1 for i in range(STRIP_DATA_BITS + 8)]
    return np.array(list(STRIP_MARKER) + payload, dtype=np.uint8)


def draw_timestamp_strip(frame: np.ndarray, ms: int, block: int = STRIP_BLOCK) -> None:
    """Paint ``ms`` (int, ms since epoch) into the top-left of ``frame`` in place."""
    h, w = frame.shape[:2]
    cols, rows = _strip_layout(w, block)
    if rows * block > h:
        raise ValueError("frame too small for the timestamp strip")
    bits = _strip_bits(ms)
    for r in range(rows):
        chunk = bits[r * cols:(r + 1) * cols]
        if chunk.size == 0:
            break
        line = np.repeat(chunk * 255, block).astype(np.uint8)
        if frame.ndim == 3:
            frame[r * block:(r + 1) * block, :line.size, :] = line[None, :, None]
        else:
            frame[r * block:(r + 1) * block, :line.size] = line[None, :]


def decode_timestamp_strip(frame: np.ndarray, block: int = STRIP_BLOCK) -> int | None:
    """Read the capture time (ms since epoch) back from a decoded frame.

    ``frame``: grey (H, W) or colour (H, W, C) uint8 array, RGB or BGR alike,
    at the resolution the camera sent. Returns None when no valid strip is
    found (marker or checksum mismatch, too little contrast).
    """
    arr = np.asarray(frame)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    elif arr.ndim != 2:
        return None
    h, w = arr.shape
    try:
        cols, rows = _strip_layout(w, block)
    except ValueError:
        return None
    if rows * block > h:
        return None
    lo, hi = block // 4, block - block // 4
    # Mean of the inner part of every block, in layout order.
    region = arr[:rows * block, :cols * block].astype(np.float32)
    region = region.reshape(rows, block, cols, block)[:, lo:hi, :, lo:hi]
    levels = region.mean(axis=(1, 3)).reshape(-1)[:STRIP_BITS]
    marker = np.array(STRIP_MARKER, dtype=bool)
    white = levels[:len(STRIP_MARKER)][marker].mean()
    black = levels[:len(STRIP_MARKER)][~marker].mean()
    if white - black < 60:
        return None
    bits = (levels > (white + black) / 2).astype(np.uint8)
    if tuple(int(b) for b in bits[:len(STRIP_MARKER)]) != STRIP_MARKER:
        return None
    value = 0
    for b in bits[len(STRIP_MARKER):]:
        value = (value << 1) | int(b)
    ms, crc = value >> 8, value & 0xFF
    if _crc8(ms.to_bytes(STRIP_DATA_BITS // 8, "big")) != crc:
        return None
    return ms


# ----------------------------------------------------------------------------
# Backgrounds


def box_blur(img: np.ndarray, radius: int, passes: int = 2) -> np.ndarray:
    """Separable box blur via cumulative sums (passes=2..3 ~ Gaussian). uint8 in/out."""
    out = img.astype(np.float32)
    k = 2 * radius + 1
    for _ in range(passes):
        for axis in (0, 1):
            pad = [(0, 0)] * out.ndim
            pad[axis] = (radius + 1, radius)
            padded = np.pad(out, pad, mode="edge")
            c = np.cumsum(padded, axis=axis, dtype=np.float64)
            n = out.shape[axis]
            hi = np.take(c, np.arange(k, k + n), axis=axis)
            lo = np.take(c, np.arange(0, n), axis=axis)
            out = ((hi - lo) / k).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _street_panorama(width: int, height: int, seed: int) -> np.ndarray:
    """A street panorama 1.6x wider and 1.25x taller than the view. int16 RGB."""
    rng = np.random.default_rng(seed)
    H, W = int(round(height * 1.25)), int(round(width * 1.6))
    img = np.zeros((H, W, 3), dtype=np.float32)
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    horizon = int(0.45 * height)
    house_base = int(0.50 * height)
    road_top = int(0.66 * height)
    road_bot = int(0.96 * height)

    # Sky: vertical gradient + soft sinusoidal clouds.
    t = (ys / max(horizon, 1)).clip(0, 1)
    sky = np.stack([120 + 80 * t, 160 + 60 * t, 225 + 20 * t], axis=-1) * np.ones((1, W, 1), np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    clouds = (np.sin(xs / (W / 7.0) + phase[0]) * np.sin(ys / (height / 9.0) + phase[1])
              + 0.5 * np.sin(xs / (W / 23.0) + phase[2])).clip(0, None)
    sky = sky + (clouds * 28)[..., None]
    img[:] = sky

    # Pavement (below horizon) with tiles.
    pav = np.array([150, 145, 135], np.float32)
    img[horizon:road_top] = pav
    tile = max(6, width // 48)
    tiles = ((np.arange(W) % tile) == 0)[None, :] | ((np.arange(H) % tile) == 0)[:, None]
    band = slice(horizon, road_top)
    img[band][tiles[band]] -= 45

    # Road with texture, kerb and lane dashes; rest of the panorama: more road/grass.
    img[road_top:road_bot] = np.array([70, 70, 74], np.float32)
    img[road_top:road_top + max(2, height // 90)] = np.array([220, 220, 210], np.float32)
    lane_y0 = int(0.80 * height)
    lane_h = max(2, height // 80)
    dash = max(12, width // 16)
    dashes = (np.arange(W) // dash) % 2 == 0
    img[lane_y0:lane_y0 + lane_h, dashes] = np.array([235, 235, 225], np.float32)
    img[road_bot:] = np.array([70, 120, 60], np.float32)  # grass verge

    # Houses: walls with brick lines, windows, doors, roofs.
    x = int(rng.integers(0, width // 20 + 1))
    while x < W - width // 12:
        hw = int(rng.integers(width // 10, width // 5))
        hh = int(rng.integers(int(0.14 * height), int(0.28 * height)))
        x1 = min(W, x + hw)
        y0 = house_base - hh
        wall = rng.integers(90, 230, size=3).astype(np.float32)
        img[y0:house_base, x:x1] = wall
        brick = max(3, height // 90)
        rows_ = np.arange(y0, house_base)
        img[rows_[(rows_ - y0) % brick == 0], x:x1] -= 35
        # Roof: dark triangle-ish band.
        roof_h = max(4, hh // 4)
        roof = rng.integers(40, 120, size=3).astype(np.float32)
        for i in range(roof_h):
            inset = (roof_h - i) * hw // (3 * roof_h)
            img[y0 - roof_h + i, x + inset:max(x + inset + 1, x1 - inset)] = roof
        # Windows grid.
        win = max(4, hw // 7)
        for wy in range(y0 + win // 2, house_base - 2 * win, 2 * win):
            for wx in range(x + win // 2, x1 - win, 2 * win):
                lit = rng.random() < 0.3
                img[wy:wy + win, wx:wx + win] = (230, 210, 120) if lit else (35, 45, 60)
                img[wy + win // 2, wx:wx + win] = (200, 200, 200)
        # Door.
        dw = max(3, hw // 8)
        dx = x + hw // 2 - dw // 2
        img[house_base - 2 * win:house_base, dx:dx + dw] = (60, 35, 20)
        x = x1 + int(rng.integers(width // 40, width // 10))

    # Poles and trees on the pavement.
    for _ in range(max(3, W // (width // 4))):
        px = int(rng.integers(0, W - 3))
        img[int(0.20 * height):road_top, px:px + max(2, width // 200)] = (40, 40, 45)
        img[int(0.20 * height):int(0.20 * height) + 3, px - 8:px + 10] = (40, 40, 45)

    # Fixed fine texture everywhere (asphalt grain, plaster...): edges for sharpness metrics.
    img += rng.normal(0.0, 7.0, size=(H, W, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.int16)


def render_view(width: int, height: int, seed: int = 1, scene: str = "street",
                shifted: bool = False, pano: np.ndarray | None = None) -> np.ndarray:
    """The camera's view of the scene as uint8 RGB; ``shifted`` = camera turned."""
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; known: {SCENES}")
    if pano is None:
        pano = _street_panorama(width, height, seed)
    if shifted:
        # Panned right by 0.6 width and tilted down by 0.25 height.
        y0, x0 = pano.shape[0] - height, pano.shape[1] - width
    else:
        y0, x0 = 0, 0
    return pano[y0:y0 + height, x0:x0 + width].astype(np.uint8)


# ----------------------------------------------------------------------------
# Frame generator


class SceneGenerator:
    """Produces frames for one simulated camera; ``state`` switchable at any time.

    Per-frame work is a copy of a precomputed noisy frame, the moving object in
    "motion", and the timestamp strip. Everything else is computed on
    ``set_state`` (once per state change) and cached.
    """

    NOISE_POOL = 6

    def __init__(self, width: int, height: int, fps: float = 10.0, seed: int = 1,
                 scene: str = "street", state: str = "normal", timestamp_strip: bool = True):
        if width < 64 or height < 48 or width % 2 or height % 2:
            raise ValueError("width/height must be even and at least 64x48")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.seed, self.scene, self.timestamp_strip = int(seed), scene, bool(timestamp_strip)
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; known: {SCENES}")
        self._pano = _street_panorama(self.width, self.height, self.seed)
        self._view = render_view(self.width, self.height, self.seed, scene, pano=self._pano)
        self._cache: dict[str, list[np.ndarray]] = {}
        self._noise = self._make_noise()
        self._index = 0
        self._last: np.ndarray | None = None
        self._frozen: bytes | None = None
        self._pool: list[np.ndarray] = []
        self.state = "normal"
        self.set_state(state)

    def _make_noise(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + 7919)
        shape = (self.height, self.width, 1)
        return [rng.integers(-2, 3, size=shape).astype(np.int16) for _ in range(self.NOISE_POOL)]

    def _base_for(self, state: str) -> np.ndarray:
        v = self._view.astype(np.int16)
        if state in ("normal", "motion"):
            return v
        if state == "black":
            return np.full_like(v, 6)
        if state == "blur":
            radius = max(4, self.width // 70)
            return box_blur(self._view, radius, passes=3).astype(np.int16)
        if state == "shift":
            return render_view(self.width, self.height, self.seed, self.scene, shifted=True,
                               pano=self._pano).astype(np.int16)
        if state == "dark":
            return (v * 0.15).astype(np.int16)
        if state == "bright":
            return (215 + v * 0.2).astype(np.int16)
        raise ValueError(state)

    def _pool_for(self, state: str) -> list[np.ndarray]:
        key = "normal" if state == "motion" else state
        if key not in self._cache:
            base = self._base_for(key)
            noise_gain = 2 if key == "dark" else 1
            self._cache[key] = [np.clip(base + n * noise_gain, 0, 255).astype(np.uint8)
                                for n in self._noise]
        return self._cache[key]

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; known: {', '.join(STATES)}")
        if state == "freeze":
            if self._last is None:
                self._last = self._render(int(time.time() * 1000))
            self._frozen = self._last.tobytes()
        else:
            self._pool = self._pool_for(state)  # compute before switching
            self._frozen = None
        self.state = state

    def motion_box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the moving object at frame ``index`` (may be off-frame)."""
        y0 = int(MOTION_BAND[0] * self.height)
        y1 = int(MOTION_BAND[1] * self.height)
        ow = max(16, self.width // 6)
        span = self.width + ow
        per_frame = span / max(1.0, CROSSING_SECONDS * self.fps)
        x0 = int(index * per_frame) % span - ow
        return x0, y0, x0 + ow, y1

    def _render(self, ms: int) -> np.ndarray:
        pool = self._pool or self._pool_for("normal")
        frame = pool[self._index % len(pool)].copy()
        if self.state == "motion":
            x0, y0, x1, y1 = self.motion_box(self._index)
            a, b = max(0, x0), min(self.width, x1)
            if a < b:
                frame[y0:y1, a:b] = (200, 30, 30)                       # body
                wy0, wy1 = y0 + (y1 - y0) // 6, y0 + (y1 - y0) // 2
                wa, wb = max(0, x0 + (x1 - x0) // 5), min(self.width, x1 - (x1 - x0) // 5)
                if wa < wb:
                    frame[wy0:wy1, wa:wb] = (40, 60, 90)                 # windows
                frame[y1 - (y1 - y0) // 5:y1, a:b] = (20, 20, 20)        # wheels/shadow
        if self.timestamp_strip:
            draw_timestamp_strip(frame, ms)
        return frame

    def next_frame_bytes(self, ms: int | None = None) -> bytes:
        """Next frame as packed RGB bytes (identical bytes while frozen)."""
        frozen = self._frozen
        if frozen is not None:
            return frozen
        return self.next_frame(ms).tobytes()

    def next_frame(self, ms: int | None = None) -> np.ndarray:
        """Next frame as an RGB array; ``ms`` = capture time (default: now)."""
        frozen = self._frozen
        if frozen is not None:
            return np.frombuffer(frozen, np.uint8).reshape(self.height, self.width, 3)
        if ms is None:
            ms = int(time.time() * 1000)
        frame = self._render(ms)
        self._index += 1
        self._last = frame
        return frame

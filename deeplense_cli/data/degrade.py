"""Images as a user's 8-bit files hold them: ``train.degrade`` trains on them, and the
out-of-distribution detector of such a model is fitted on them too."""

from __future__ import annotations

import io

import numpy as np

# JPEG qualities a degraded training image is saved at (uniform); PIL's default is 75
JPEG_QUALITIES = (60, 95)


def degrade(
    raw: np.ndarray,
    rng: np.random.Generator,
    p: float,
    rows: np.ndarray | None = None,
    total: int | None = None,
) -> np.ndarray:
    """Raw images ``(N, C, H, W)`` as a user's files may hold them: each, with probability
    ``p``, scaled to 8 bits (min-max per image, rounded) and, for half of those, also
    JPEG-compressed at a random quality. The models min-max each image, so only the rounding
    and the compression change what they see.

    ``rows``: ``raw`` holds only these positions of a batch of ``total`` images (one rank's
    share in distributed training); the draws are made for the whole batch."""
    from PIL import Image

    out = np.array(raw, dtype=np.float32, copy=True)
    picked = np.flatnonzero(rng.random(len(out) if rows is None else int(total or 0)) < p)
    jpeg = rng.random(len(picked)) < 0.5
    quality = rng.integers(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1, len(picked))
    if rows is not None:  # the picked images of this share, at their places in it
        place = {int(r): i for i, r in enumerate(rows)}
        keep = np.array([int(i) in place for i in picked], dtype=bool)
        picked = np.array([place[int(i)] for i in picked[keep]], dtype=np.int64)
        jpeg, quality = jpeg[keep], quality[keep]
    for i, as_jpeg, q in zip(picked, jpeg, quality, strict=True):
        image = out[i]
        lo, span = float(image.min()), float(image.max() - image.min())
        eight = np.round((image - lo) / span * 255) if span > 0 else np.zeros_like(image)
        if as_jpeg:
            for c in range(eight.shape[0]):
                buf = io.BytesIO()
                Image.fromarray(eight[c].astype(np.uint8)).save(buf, format="JPEG", quality=int(q))
                eight[c] = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32)
        out[i] = eight
    return out

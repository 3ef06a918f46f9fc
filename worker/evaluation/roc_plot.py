"""The ROC curves of an evaluation as a PNG, drawn with Pillow (already a dependency, so
no plotting library is pulled into the worker image for one chart)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 560
MARGIN = 64
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def draw_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str = "ROC") -> Path:
    """``curves``: (legend label, fpr, tpr) each; written to ``path`` as PNG."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    side = SIZE - 2 * MARGIN

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return MARGIN + fpr * side, SIZE - MARGIN - tpr * side

    for tick in np.linspace(0, 1, 6):
        x, y = xy(tick, tick)
        draw.line([(x, MARGIN), (x, SIZE - MARGIN)], fill=(230, 230, 230))
        draw.line([(MARGIN, y), (SIZE - MARGIN, y)], fill=(230, 230, 230))
        draw.text((x - 8, SIZE - MARGIN + 6), f"{tick:.1f}", fill="black", font=font)
        draw.text((MARGIN - 28, y - 6), f"{tick:.1f}", fill="black", font=font)
    draw.rectangle([MARGIN, MARGIN, SIZE - MARGIN, SIZE - MARGIN], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(150, 150, 150), width=1)  # chance
    for i, (label, fpr, tpr) in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([xy(f, t) for f, t in zip(fpr, tpr)], fill=colour, width=2)
        ly = MARGIN + 12 + 16 * i
        lx = SIZE - MARGIN - 220
        draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=colour, width=3)
        draw.text((lx + 26, ly), label, fill="black", font=font)
    draw.text((MARGIN, 12), title, fill="black", font=font)
    draw.text((SIZE // 2 - 60, SIZE - MARGIN + 24), "false positive rate", fill="black", font=font)
    draw.text((8, MARGIN - 20), "true positive rate", fill="black", font=font)
    path = Path(path)
    image.save(path, format="PNG")
    return path

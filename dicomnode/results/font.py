"""A 5x7 bitmap font for the few words we burn into heatmaps (no PIL, no font files).

Upper-case letters, digits and a little punctuation; anything else draws as ``?``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GLYPH_HEIGHT", "GLYPH_WIDTH", "text_mask", "text_width"]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
#: blank columns between glyphs
_SPACING = 1

# each glyph: 7 rows of 5 columns, "#" ink, "." paper
_GLYPHS: dict[str, str] = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
}


def _bitmap(pattern: str) -> np.ndarray:
    rows = pattern.split()
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


_BITMAPS = {ch: _bitmap(p) for ch, p in _GLYPHS.items()}
assert all(b.shape == (GLYPH_HEIGHT, GLYPH_WIDTH) for b in _BITMAPS.values())


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn by :func:`text_mask`."""
    if not text:
        return 0
    return (len(text) * (GLYPH_WIDTH + _SPACING) - _SPACING) * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ink mask of ``text`` (upper-cased), ``7*scale`` rows high, each pixel ``scale``²."""
    if scale < 1:
        raise ValueError(f"scale must be 1 or more, got {scale}")
    text = text.upper()
    mask = np.zeros((GLYPH_HEIGHT, text_width(text)), dtype=bool)
    for i, ch in enumerate(text):
        x = i * (GLYPH_WIDTH + _SPACING)
        mask[:, x : x + GLYPH_WIDTH] = _BITMAPS.get(ch, _BITMAPS["?"])
    return np.kron(mask, np.ones((scale, scale), dtype=bool)).astype(bool)

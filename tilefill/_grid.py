"""The overlapping tile grid: which window of the scene each DIP fit sees.

Tiles are squares of ``size`` px placed every ``size - overlap`` px. The last row and column
are shifted inward so that they end exactly at the scene border: no tile is padded with
invented pixels, at the price of a wider overlap there. A grid made from a scene
(:meth:`TileGrid.from_scene`) carries its transform and CRS, so each tile knows its bounds.

A scene narrower or lower than one tile (a field-scale chip) is one tile along that side, which
reaches past the scene's border: the grid's :attr:`~TileGrid.extent`. Where the scene is smaller
than a tile both ways, :meth:`TileGrid.from_config` shrinks the tile to the smallest side the
network takes that covers it (61 x 61 px: one 64 px tile). The work store holds what lies beyond
the scene as collar (outside the footprint: not data, not a gap, never scored or written; see
``tilefill._store``). A scene at least a tile wide and high gets the grid it always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.windows import Window

from tilefill._errors import TilefillError


def _starts(length: int, size: int, stride: int) -> tuple[int, ...]:
    if length <= size:
        return (0,)
    starts = list(range(0, length - size, stride))
    starts.append(length - size)  # shifted inward, never past the border
    return tuple(starts)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`: its position, pixel window and georeferencing.

    Examples
    --------
    >>> grid = TileGrid(height=600, width=500, size=256, overlap=32)
    >>> tile = grid[0]
    >>> tile.window
    Window(col_off=0, row_off=0, width=256, height=256)
    >>> TileGrid(600, 500, 256, 32, Affine(30, 0, 500000, 0, -30, 4200000))[1].bounds
    BoundingBox(left=506720.0, bottom=4192320.0, right=514400.0, top=4200000.0)
    """

    index: int
    row: int  # position in the grid
    col: int
    y: int  # top-left pixel in the scene
    x: int
    size: int
    scene_transform: Affine
    crs: str | None = None  # the scene's, as WKT

    @property
    def window(self) -> Window:
        """The tile as a rasterio window of the scene."""
        return Window(self.x, self.y, self.size, self.size)

    @property
    def slices(self) -> tuple[slice, slice]:
        """The tile's (rows, columns) slices of a scene array."""
        return slice(self.y, self.y + self.size), slice(self.x, self.x + self.size)

    @property
    def transform(self) -> Affine:
        """The affine transform of the tile's own top-left pixel."""
        return self.scene_transform @ Affine.translation(self.x, self.y)

    @property
    def bounds(self) -> BoundingBox:
        """The tile's extent in the scene's CRS (of its four corners, for a rotated transform too)."""
        n = self.size
        xs, ys = zip(*(self.transform * c for c in ((0, 0), (n, 0), (0, n), (n, n))))
        return BoundingBox(min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class TileGrid:
    """An overlapping grid of square tiles over a ``height`` x ``width`` scene.

    Parameters
    ----------
    height, width : int
        Scene size in pixels. A side shorter than ``size`` gets one tile, reaching past the scene
        (:attr:`extent`).
    size : int
        Tile side, a multiple of ``multiple``.
    overlap : int
        Pixels shared by neighbouring tiles (at least; the last row/column overlaps more), a
        multiple of ``multiple``.
    transform : Affine
        The scene's affine transform, so each tile knows its own.
    crs : str, optional
        The scene's CRS as WKT, carried to each tile.
    multiple : int
        What tile sides must divide by: ``2 ** levels`` of the network that fits them (32 for five).

    Examples
    --------
    >>> grid = TileGrid(height=600, width=500, size=256, overlap=32)
    >>> grid.shape, len(grid)
    ((3, 3), 9)
    >>> [t.y for t in grid if t.col == 0]
    [0, 224, 344]
    """

    height: int
    width: int
    size: int = 256
    overlap: int = 32
    transform: Affine = Affine.identity()
    crs: str | None = None
    multiple: int = 32

    def __post_init__(self):
        if self.size % self.multiple or self.overlap % self.multiple:
            raise TilefillError(f"tile size {self.size} and overlap {self.overlap} must be multiples of "
                                f"{self.multiple}")
        if not 0 <= self.overlap < self.size:
            raise TilefillError(f"overlap {self.overlap} must be smaller than the tile size {self.size}")
        if self.height < 1 or self.width < 1:
            raise TilefillError(f"a scene of {self.height} x {self.width} px has no pixel to tile")

    @classmethod
    def from_config(cls, height: int, width: int, config, transform: Affine = Affine.identity(),
                    crs: str | None = None) -> "TileGrid":
        """The grid of ``config.tiles`` over a ``height`` x ``width`` raster, sides a multiple of its network's.

        A raster smaller than one tile both ways is one tile of the smallest side that covers it
        (a multiple of the network's, at least two of them: what its levels can halve); its
        overlap is kept where it is smaller than that side, else 0 (one tile overlaps nothing).

        Examples
        --------
        >>> from tilefill import load_config
        >>> TileGrid.from_config(600, 500, load_config("default")).shape  # 128 px tiles
        (6, 5)
        >>> small = TileGrid.from_config(61, 61, load_config("default"))
        >>> small.size, small.shape, small.extent
        (64, (1, 1), (64, 64))
        """
        m = config.network.multiple
        size, overlap = config.tiles.size, config.tiles.overlap
        longest = max(height, width)
        if longest < size:
            size = max(2 * m, -(-longest // m) * m)
            overlap = overlap if overlap < size else 0
        return cls(height, width, size, overlap, transform, crs=crs, multiple=m)

    @classmethod
    def from_scene(cls, info, config) -> "TileGrid":
        """The grid of ``config`` over a scene (``tilefill._scene.SceneInfo``): its size, transform and CRS."""
        return cls.from_config(info.height, info.width, config, info.affine, info.crs_wkt)

    @property
    def stride(self) -> int:
        """Pixels from one tile's start to the next: the side less the overlap."""
        return self.size - self.overlap

    @cached_property
    def row_starts(self) -> tuple[int, ...]:
        return _starts(self.height, self.size, self.stride)

    @cached_property
    def col_starts(self) -> tuple[int, ...]:
        return _starts(self.width, self.size, self.stride)

    @property
    def extent(self) -> tuple[int, int]:
        """(rows, columns) the tiles span: the scene's size, or one tile's side where the scene is smaller.

        Examples
        --------
        >>> TileGrid(61, 300, 64, 32).extent
        (64, 300)
        """
        return max(self.height, self.size), max(self.width, self.size)

    @property
    def padded(self) -> bool:
        """Whether the tiles reach past the scene (a side shorter than one tile): the store pads it."""
        return self.extent != (self.height, self.width)

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles per column and per row: (rows of tiles, columns of tiles)."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row, col = divmod(index, self.shape[1])
        return Tile(index, row, col, self.row_starts[row], self.col_starts[col], self.size, self.transform,
                    self.crs)

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))

    def tiles_in_rows(self, y0: int, y1: int) -> list[Tile]:
        """Tiles that intersect scene rows ``[y0, y1)``."""
        rows = [r for r, y in enumerate(self.row_starts) if y < y1 and y + self.size > y0]
        return [self[r * self.shape[1] + c] for r in rows for c in range(self.shape[1])]

    def context_window(self, tile: Tile, factor: int) -> tuple[int, int, int]:
        """A square window ``factor`` times the tile's side around it, clamped inside the grid's extent.

        Returns ``(y, x, side)``; the side stays a multiple of ``multiple``, never exceeds the extent
        and is never less than the tile's.
        """
        m = self.multiple
        height, width = self.extent
        side = max(tile.size, min(tile.size * factor, height // m * m, width // m * m))
        cy, cx = tile.y + tile.size // 2, tile.x + tile.size // 2
        y = int(np.clip(cy - side // 2, 0, height - side))
        x = int(np.clip(cx - side // 2, 0, width - side))
        return y, x, side

    def weights(self, tile: Tile) -> np.ndarray:
        """Blending weights of a tile (size x size, float32).

        1 in the tile's core, a raised-cosine ramp across the overlap on every side that has a
        neighbour, no taper on sides that touch the scene border. Weights stay above zero, so
        the normalised sum over tiles is defined everywhere a tile reaches.
        """
        ramp = self.overlap
        w = np.ones(self.size, dtype=np.float64)
        if ramp:
            # (i + 0.5) / ramp keeps the first weight > 0
            up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        def profile(start: int, length: int) -> np.ndarray:
            p = w.copy()
            if ramp:
                if start > 0:
                    p[:ramp] = up
                if start + self.size < length:
                    p[-ramp:] = up[::-1]
            return p
        wy = profile(tile.y, self.height)
        wx = profile(tile.x, self.width)
        return np.outer(wy, wx).astype(np.float32)

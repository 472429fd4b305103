"""The tile grid: tile starts, the inward shift of the last row/column, windows, transforms, weights."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import transform as window_transform

from tilefill import TileGrid, TilefillError

pytestmark = pytest.mark.timeout(30)

SCENE_TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4200000.0)

GRIDS = [
    # height, width, size, overlap
    (600, 500, 256, 32),
    (100, 300, 64, 32),
    (64, 64, 64, 32),  # exactly one tile
    (160, 160, 64, 32),  # starts fall exactly on the border: no extra shifted tile
    (200, 129, 64, 32),  # last column shifted by 1 px past the regular stride
    (97, 250, 32, 0),  # no overlap at all
    (300, 300, 96, 64),
]


def _coverage(grid: TileGrid) -> np.ndarray:
    count = np.zeros((grid.height, grid.width), dtype=np.int32)
    for t in grid:
        count[t.slices] += 1
    return count


def test_600_by_500_scene_with_256_px_tiles():
    grid = TileGrid(height=600, width=500, size=256, overlap=32)
    assert grid.stride == 224
    assert grid.row_starts == (0, 224, 344)
    # 500 px need three columns: with only (0, 244) the two tiles would share 12 px, less than the overlap
    assert grid.col_starts == (0, 224, 244)
    assert grid.shape == (3, 3) and len(grid) == 9


def test_tilegrid_docstring_examples_run():
    import doctest

    from tilefill import _grid

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(_grid.TileGrid, "TileGrid", globs=vars(_grid).copy()):
        runner.run(test, out=lambda _s: None)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("height, width, size, overlap", GRIDS)
def test_starts_cover_the_scene_without_crossing_the_border(height, width, size, overlap):
    grid = TileGrid(height, width, size, overlap, SCENE_TRANSFORM)
    for starts, length in ((grid.row_starts, height), (grid.col_starts, width)):
        assert starts[0] == 0
        assert starts[-1] == length - size  # the last one ends exactly at the border
        assert all(b > a for a, b in zip(starts, starts[1:]))  # strictly increasing, no duplicates
        # neighbours overlap by at least `overlap` (the shifted last one by more)
        assert all(size - (b - a) >= overlap for a, b in zip(starts, starts[1:]))
        # regular stride everywhere except the last step
        assert all(b - a == size - overlap for a, b in zip(starts[:-1], starts[1:-1]))
    assert len(grid) == grid.shape[0] * grid.shape[1] == len(list(grid))
    for t in grid:
        assert 0 <= t.y and t.y + t.size <= height and 0 <= t.x and t.x + t.size <= width
        assert t.size == size
    cov = _coverage(grid)
    assert cov.min() >= 1  # every pixel is in some tile


def test_tiles_are_row_major_with_window_and_slices():
    grid = TileGrid(200, 129, 64, 32, SCENE_TRANSFORM)
    rows, cols = grid.shape
    for i, t in enumerate(grid):
        assert t.index == i and divmod(i, cols) == (t.row, t.col)
        assert (t.y, t.x) == (grid.row_starts[t.row], grid.col_starts[t.col])
        w = t.window
        assert (w.row_off, w.col_off, w.height, w.width) == (t.y, t.x, 64, 64)
        assert t.slices == (slice(t.y, t.y + 64), slice(t.x, t.x + 64))
    assert grid[len(grid) - 1].x == 129 - 64
    for bad in (-1, len(grid)):
        with pytest.raises(IndexError):
            grid[bad]


def test_tile_transform_places_the_tile_in_the_scene():
    grid = TileGrid(300, 250, 64, 32, SCENE_TRANSFORM)
    for t in grid:
        # pixel (0, 0) of the tile is pixel (x, y) of the scene
        assert t.transform @ (0, 0) == pytest.approx(SCENE_TRANSFORM @ (t.x, t.y))
        assert t.transform @ (5.5, 17.5) == pytest.approx(SCENE_TRANSFORM @ (t.x + 5.5, t.y + 17.5))
        assert t.transform.almost_equals(window_transform(t.window, SCENE_TRANSFORM))
    last = grid[len(grid) - 1]
    # the last tile's bottom-right corner is the scene's bottom-right corner
    assert last.transform @ (64, 64) == pytest.approx(SCENE_TRANSFORM @ (250, 300))


def test_rotated_transform_is_respected():
    rotated = SCENE_TRANSFORM @ Affine.rotation(12.0)
    grid = TileGrid(128, 128, 64, 32, rotated)
    t = grid[3]
    assert t.transform @ (0, 0) == pytest.approx(rotated @ (t.x, t.y))


def test_a_grid_made_from_a_scene_carries_its_crs_and_each_tile_its_bounds():
    from rasterio.crs import CRS

    from tilefill import load_config

    wkt = CRS.from_epsg(32633).to_wkt()
    info = SimpleNamespace(height=300, width=250, affine=SCENE_TRANSFORM @ Affine.rotation(12.0), crs_wkt=wkt)
    grid = TileGrid.from_scene(info, load_config("fast", {"tiles.size": 64, "tiles.overlap": 32}))
    assert (grid.height, grid.width, grid.size, grid.overlap, grid.crs) == (300, 250, 64, 32, wkt)
    for t in grid:
        assert t.crs == wkt
        corners = [info.affine @ (t.x + dx, t.y + dy) for dx in (0, 64) for dy in (0, 64)]
        xs, ys = zip(*corners)
        assert tuple(t.bounds) == pytest.approx((min(xs), min(ys), max(xs), max(ys)))


@pytest.mark.parametrize("levels, size, ok", [(4, 48, True), (5, 48, False), (5, 64, True), (6, 64, False),
                                             (6, 128, True)])
def test_tile_sides_must_divide_by_what_the_network_levels_halve(levels, size, ok):
    from tilefill import load_config

    over = {"network.channels_down": [8] * levels, "network.channels_up": [8] * levels,
            "network.channels_skip": [4] * levels, "tiles.size": size, "tiles.overlap": 0}
    if not ok:
        with pytest.raises(TilefillError, match=f"multiple of {2 ** levels}|at least {2 ** (levels + 1)}"):
            load_config("fast", over)
        return
    cfg = load_config("fast", over)
    grid = TileGrid.from_config(200, 200, cfg)
    assert grid.multiple == 2 ** levels and all(t.size == size for t in grid)


@pytest.mark.parametrize("height, width", [(50, 300), (300, 63), (10, 10)])
def test_a_side_shorter_than_a_tile_is_one_tile_reaching_past_the_scene(height, width):
    grid = TileGrid(height, width, 64, 32)
    assert grid.padded and grid.extent == (max(height, 64), max(width, 64))
    for starts, length in ((grid.row_starts, height), (grid.col_starts, width)):
        if length < 64:
            assert starts == (0,)  # one tile, from the scene's first pixel past its last
        else:
            assert starts[-1] == length - 64
    for t in grid:  # every tile lies inside the extent, and a wider context window never shrinks below it
        assert t.y + t.size <= grid.extent[0] and t.x + t.size <= grid.extent[1]
        y, x, side = grid.context_window(t, 4)
        assert side >= t.size and y + side <= grid.extent[0] and x + side <= grid.extent[1]


@pytest.mark.parametrize("preset, height, width, side", [("default", 61, 61, 64), ("default", 10, 3, 64),
                                                          ("paper", 100, 150, 160), ("fast", 191, 12, 192),
                                                          ("default", 61, 300, 128)])
def test_a_scene_smaller_than_a_tile_gets_the_smallest_tile_that_covers_it(preset, height, width, side):
    from tilefill import load_config

    cfg = load_config(preset)
    grid = TileGrid.from_config(height, width, cfg)
    assert grid.size == side and grid.size % cfg.network.multiple == 0
    assert grid.overlap == (cfg.tiles.overlap if cfg.tiles.overlap < side else 0)
    assert grid.padded and grid.extent == (max(height, side), max(width, side))
    if max(height, width) < cfg.tiles.size:
        assert len(grid) == 1


@pytest.mark.parametrize("preset", ["default", "fast", "paper"])
@pytest.mark.parametrize("tiles_high, tiles_wide", [(1.0, 1.0), (1.0, 5.3), (1.01, 1.0), (4.7, 3.9)])
def test_a_scene_at_least_a_tile_wide_and_high_keeps_its_grid(preset, tiles_high, tiles_wide):
    """Scenes a tile or more on both sides: the preset's tiles, no padding, the context windows as before."""
    from tilefill import load_config

    cfg = load_config(preset)
    size = cfg.tiles.size
    height, width = int(size * tiles_high), int(size * tiles_wide)
    grid = TileGrid.from_config(height, width, cfg)
    assert (grid.size, grid.overlap) == (size, cfg.tiles.overlap)
    assert grid.extent == (height, width) and not grid.padded
    m = cfg.network.multiple
    for t in grid:
        for factor in (1, 2, 4):
            side = min(t.size * factor, height // m * m, width // m * m)  # the rule before padding existed
            cy, cx = t.y + t.size // 2, t.x + t.size // 2
            expect = (int(np.clip(cy - side // 2, 0, height - side)), int(np.clip(cx - side // 2, 0, width - side)),
                      side)
            assert grid.context_window(t, factor) == expect


@pytest.mark.parametrize("size, overlap", [(48, 0), (64, 16), (64, 64), (64, 96)])
def test_bad_size_or_overlap_is_an_error(size, overlap):
    with pytest.raises(TilefillError):
        TileGrid(300, 300, size, overlap)


def test_tiles_in_rows_matches_brute_force():
    grid = TileGrid(300, 200, 64, 32)
    for y0, y1 in [(0, 1), (0, 64), (31, 33), (100, 228), (299, 300), (0, 300)]:
        expect = [t.index for t in grid if t.y < y1 and t.y + t.size > y0]
        assert [t.index for t in grid.tiles_in_rows(y0, y1)] == expect


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_context_window_contains_the_tile_and_stays_inside(factor):
    grid = TileGrid(300, 200, 64, 32)
    for t in grid:
        y, x, side = grid.context_window(t, factor)
        assert side % 32 == 0 and side <= 64 * factor
        assert side == min(64 * factor, 288, 192)
        assert 0 <= y and y + side <= 300 and 0 <= x and x + side <= 200
        assert y <= t.y and t.y + t.size <= y + side and x <= t.x and t.x + t.size <= x + side


def test_weights_of_a_lone_tile_are_all_ones():
    grid = TileGrid(64, 64, 64, 32)
    w = grid.weights(grid[0])
    assert w.dtype == np.float32 and w.shape == (64, 64)
    assert np.all(w == 1)


def test_weights_ramp_only_towards_neighbours():
    grid = TileGrid(224, 224, 96, 32)  # 3 x 3 tiles, regular stride
    assert grid.shape == (3, 3)
    n, ov = 96, grid.overlap
    rows, cols = grid.shape
    mid = slice(ov, n - ov)
    for t in grid:
        w = grid.weights(t)
        assert w.shape == (n, n) and w.dtype == np.float32
        assert np.all(w > 0) and np.all(w <= 1)
        has = {"top": t.row > 0, "bottom": t.row < rows - 1, "left": t.col > 0, "right": t.col < cols - 1}
        edge = {"top": w[0, mid], "bottom": w[-1, mid], "left": w[mid, 0], "right": w[mid, -1]}
        for side, neighbour in has.items():
            if neighbour:
                assert edge[side].max() < 0.01  # tapered towards a neighbour
            else:
                assert np.all(edge[side] == 1)  # no taper at the scene border
        assert np.all(w[mid, mid] == 1)  # the core is 1
        # ramps rise monotonically into the tile and only span the overlap
        if has["left"]:
            assert np.all(np.diff(w[n // 2, :ov]) > 0) and np.all(w[n // 2, ov:n - ov] == 1)
        else:
            assert np.all(w[n // 2, :ov] == 1)
        if has["bottom"]:
            assert np.all(np.diff(w[n - ov:, n // 2]) < 0)
        else:
            assert np.all(w[n - ov:, n // 2] == 1)


def test_corner_tile_has_no_taper_on_its_border_sides():
    grid = TileGrid(160, 160, 64, 32)
    w = grid.weights(grid[0])  # top-left
    assert np.all(w[0, :32] == 1) and np.all(w[:32, 0] == 1)
    # the bottom and right ramps fall to nearly 0 (but stay positive); they multiply in the corner
    assert 0 < w[-1, 0] < 0.01 and w[-1, 0] == pytest.approx(w[0, -1])
    assert w[-1, -1] == pytest.approx(w[-1, 0] ** 2)


@pytest.mark.parametrize("height, width, size, overlap", GRIDS)
def test_normalised_weights_reproduce_a_field_exactly(height, width, size, overlap):
    grid = TileGrid(height, width, size, overlap)
    yy, xx = np.mgrid[0:height, 0:width]
    field = (0.3 + 0.2 * np.sin(xx / 17.0) * np.cos(yy / 11.0)).astype(np.float32)
    acc = np.zeros((height, width), dtype=np.float64)
    wsum = np.zeros((height, width), dtype=np.float64)
    const = np.zeros((height, width), dtype=np.float64)
    for t in grid:
        w = grid.weights(t).astype(np.float64)
        wsum[t.slices] += w
        acc[t.slices] += w * field[t.slices]
        const[t.slices] += w * 0.7
    assert wsum.min() > 0  # defined everywhere
    norm = np.zeros_like(wsum)
    for t in grid:
        norm[t.slices] += grid.weights(t) / wsum[t.slices]
    np.testing.assert_allclose(norm, 1.0, rtol=0, atol=1e-12)  # normalised weights sum to exactly 1
    np.testing.assert_allclose(const / wsum, 0.7, rtol=0, atol=1e-12)  # a constant field comes back
    np.testing.assert_allclose(acc / wsum, field, rtol=0, atol=1e-6)  # and so does any field


def test_regular_overlaps_are_a_partition_of_unity():
    # Where neighbours overlap by exactly `overlap`, the raised-cosine ramps sum to 1 on their own.
    grid = TileGrid(160, 160, 64, 32)
    wsum = np.zeros((160, 160))
    for t in grid:
        wsum[t.slices] += grid.weights(t)
    np.testing.assert_allclose(wsum, 1.0, atol=1e-6)


def test_blend_of_disagreeing_tiles_stays_between_them():
    grid = TileGrid(200, 129, 64, 32)
    rng = np.random.default_rng(0)
    levels = rng.random(len(grid))
    acc = np.zeros((200, 129))
    wsum = np.zeros((200, 129))
    for t in grid:
        w = grid.weights(t)
        acc[t.slices] += w * levels[t.index]
        wsum[t.slices] += w
    blend = acc / wsum
    assert blend.min() >= levels.min() - 1e-9 and blend.max() <= levels.max() + 1e-9
    # smooth seams: no jump between neighbouring pixels larger than the ramp allows
    step = max(np.abs(np.diff(blend, axis=0)).max(), np.abs(np.diff(blend, axis=1)).max())
    assert step < 0.25

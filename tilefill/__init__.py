"""tilefill: restore gaps in satellite scenes with Deep Image Prior, tile by tile on Dask.

The public surface is small: :func:`fill_scene` runs the whole pipeline (:func:`fill_batch`
runs it over an archive), :class:`Config` holds every setting (loaded from ``configs/*.yaml``
presets), :class:`ClusterSpec` says where tiles are fitted, :class:`TileGrid` and :class:`Tile`
describe how a scene is cut. Everything else lives in private modules, one
per pipeline stage.
"""

from tilefill._clusterspec import ClusterSpec
from tilefill._config import Config, load_config
from tilefill._errors import TilefillError
from tilefill._grid import Tile, TileGrid
from tilefill._version import __version__


def __getattr__(name):
    # The pipeline pulls in torch, dask and zarr: import it only when it is used, so that
    # `import tilefill` and `tilefill --help` stay quick.
    if name in ("fill_scene", "FillReport", "FillFailed"):
        from tilefill import _pipeline

        return getattr(_pipeline, name)
    if name in ("fill_batch", "BatchReport"):
        from tilefill import _batch

        return getattr(_batch, name)
    raise AttributeError(f"module 'tilefill' has no attribute {name!r}")


__all__ = [
    "BatchReport",
    "ClusterSpec",
    "Config",
    "FillFailed",
    "FillReport",
    "Tile",
    "TileGrid",
    "TilefillError",
    "fill_batch",
    "fill_scene",
    "load_config",
    "__version__",
]

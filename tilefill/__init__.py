"""tilefill: restore gaps in satellite scenes with Deep Image Prior, tile by tile on Dask.

The public surface is small: :func:`fill_scene` runs the whole pipeline (:func:`fill_batch`
runs it over an archive), :class:`Config` holds every setting (loaded from ``configs/*.yaml``
presets), :class:`ClusterSpec` says where tiles are fitted, :class:`TileGrid` and :class:`Tile`
describe how a scene is cut. Everything else lives in private modules, one per pipeline stage:

=====================================  ============================================================
``_config``                            every setting, in tiers, with its doc
``_scene``, ``_landsat``               read and mask: GeoTIFFs and Landsat product folders
``_remote``, ``_stac``                 scenes by URL (GDAL's /vsis3/, /vsicurl/ ...) and STAC items
``_grid``                              the overlapping tile grid
``_runkey``                            the run key that guards a work store
``_store``                             the tile store (Zarr): scaled scene, gaps, predictions
``_fill``                              one tile task: its window, the fill, its chunk
``_dip``, ``_runtime``                 Deep Image Prior and the engine it runs on
``_classical``, ``_distance_blend``    the classical fills and their blend with DIP
``_schedule``                          tile tasks on the cluster: retries, progress, stops
``_cluster``, ``_clusterspec``         starting, connecting to and checking clusters
``_signals``                           Ctrl-C and SIGTERM in the command and its workers
``_mosaic``                            the mosaic of the tiles, written as the restored GeoTIFF
``_pipeline``                          one scene, stage after stage, and its report
``_archive``, ``_batch``               many scenes: discovery, done records, claims; the pipeline
``_objstore``, ``_bucket``             object storage: conditional writes; a batch's outputs in a bucket
``_records``, ``_metrics``, ``_gaps``  JSON records; scores; gap masks
``cli``, ``_demo``                     the ``tilefill`` command and its demo
=====================================  ============================================================
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

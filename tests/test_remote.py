"""Inputs by URL and STAC items, against real servers on 127.0.0.1 (tests/servers.py).

A scene, a Landsat product folder and STAC items on a local S3 server (moto's server mode) and
on a plain HTTP server with range requests: filled bit for bit as from local files, read window
by window, keyed without reading the scene, product folders found by listing a prefix (or by
their MTL where a server cannot list), file names in the MTL kept inside the product, items and
item collections, a STAC API search, and the bad inputs of the issue, one line each.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import smooth_field, stripe_mask, to_range, write_geotiff, write_landsat_product
from servers import HttpServer, clear_gdal_cache, new_bucket, s3_env, upload_tree
from tilefill import ClusterSpec, TilefillError, fill_batch, fill_scene
from tilefill._remote import RemotePath, gdal_path, is_url, list_dir
from tilefill.cli import main

N = 96
FAST = {"method": "gdal", "tile_size": 64, "overlap": 32}


@pytest.fixture
def s3(monkeypatch):
    """The local S3 server's environment, set as a user would (credentials and endpoint in the environment)."""
    env = s3_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _striped_product(parent: Path, shift: int = 0, **kw):
    """A Landsat 7 Level-2 product whose bands carry SLC-off-like stripes (0 = fill, no nodata declared)."""
    gaps = stripe_mask(N, N, period=16, width_px=3, shift=shift)
    data = {k: np.where(gaps, 0, to_range(smooth_field(1, N, N), "uint16")[0] + i + 7 * shift) for i, k in
            enumerate(["1", "2", "3", "4", "5", "7"])}
    return write_landsat_product(parent, shape=(N, N), data=data, **kw)


def _cog(path: Path) -> Path:
    """A tiled, compressed GeoTIFF with stripes of nodata, as a COG serves its bands."""
    values = to_range(smooth_field(3, N * 4, N * 4), "uint16")
    values[:, stripe_mask(N * 4, N * 4, period=16, width_px=3)] = 0
    write_geotiff(path, values, nodata=0)
    with rasterio.open(path) as src:
        profile = {**src.profile, "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}
        data = src.read()
    cog = path.with_name("cog_" + path.name)
    with rasterio.open(cog, "w", **profile) as dst:
        dst.write(data)
    return cog


def _same_output(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile == y.profile and x.tags() == y.tags()
        assert np.array_equal(x.read(), y.read())
    assert a.read_bytes() == b.read_bytes()


# --- URLs ----------------------------------------------------------------------------------------------------

def test_urls_map_to_gdal_virtual_file_systems_and_other_schemes_are_refused():
    assert gdal_path("s3://b/k/x.TIF") == "/vsis3/b/k/x.TIF"
    assert gdal_path("gs://b/k/x.TIF") == "/vsigs/b/k/x.TIF"
    assert gdal_path("az://c/k/x.TIF") == "/vsiaz/c/k/x.TIF"
    assert gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert gdal_path("/data/x.tif") == "/data/x.tif" and not is_url("/data/x.tif")
    with pytest.raises(TilefillError, match="cannot read ftp:// URLs"):
        gdal_path("ftp://h/x.tif")
    with pytest.raises(TilefillError, match="no bucket"):
        gdal_path("s3:///x.tif")
    p = RemotePath("s3://b/prefix/LC08_X_MTL.txt")
    assert (p.name, p.suffix, str(p.parent), str(p.parent / "B1.TIF")) == (
        "LC08_X_MTL.txt", ".txt", "s3://b/prefix", "s3://b/prefix/B1.TIF")


def test_a_product_folder_from_s3_is_filled_bit_for_bit_as_from_local_files(tmp_path, s3):
    product = _striped_product(tmp_path / "local")
    url = upload_tree(product.folder, new_bucket(), f"collection02/{product.product_id}")
    local = fill_scene(product.folder, tmp_path / "local.tif", cluster=ClusterSpec(workers=0), **FAST)
    remote = fill_scene(url, tmp_path / "remote.tif", cluster=ClusterSpec(workers=0), **FAST)
    assert remote.gap_pixels == local.gap_pixels > 0
    _same_output(tmp_path / "local.tif", tmp_path / "remote.tif")
    # the run key names the objects, keyed by their ETags: nothing of them was downloaded to key the run
    assert all(f.path.startswith(url + "/") for f in remote.run_key.files)


def test_a_geotiff_from_s3_with_dip_on_two_workers_matches_the_local_run(tmp_path, s3, tiny_config):
    cog = _cog(tmp_path / "scene.tif")
    bucket = new_bucket()
    from servers import s3_client

    s3_client().upload_file(str(cog), bucket, "scenes/scene.tif")
    cfg = tiny_config.override({"fit.iterations": 2})
    spec = ClusterSpec(workers=2)
    fill_scene(cog, tmp_path / "local.tif", config=cfg, cluster=spec)
    fill_scene(f"s3://{bucket}/scenes/scene.tif", tmp_path / "remote.tif", config=cfg, cluster=spec)
    _same_output(tmp_path / "local.tif", tmp_path / "remote.tif")


def test_a_cog_over_http_is_read_in_windows_and_keyed_without_reading_it(tmp_path):
    from tilefill._runkey import remote_input
    from tilefill._scene import open_scene
    from rasterio.windows import Window

    cog = _cog(tmp_path / "scene.tif")
    size = cog.stat().st_size
    with HttpServer(tmp_path) as http:
        url = f"{http.url}/{cog.name}"
        clear_gdal_cache()
        before = http.bytes_sent
        key = remote_input(url)
        assert http.bytes_sent == before and key.size == size  # a HEAD: no byte of the scene for its key
        with open_scene(url) as scene:
            scene.read(Window(0, 0, 64, 64))
        assert http.bytes_sent - before < size / 4  # one tile (and the header), not the file
        clear_gdal_cache()
        before = http.bytes_sent
        fill_scene(url, tmp_path / "out.tif", cluster=ClusterSpec(workers=0), **FAST)
        read = http.bytes_sent - before
    assert read <= 1.2 * size, f"{read} bytes read of a {size}-byte scene"


def test_a_product_folder_is_found_by_listing_its_prefix_or_taken_by_its_mtl_url(tmp_path, s3):
    product = _striped_product(tmp_path / "local")
    url = upload_tree(product.folder, new_bucket(), f"c2/{product.product_id}")
    names = dict(list_dir(url))
    assert names[product.mtls[0].name] is False and len(names) == len(list(product.folder.iterdir()))
    from tilefill._landsat import read_product

    by_prefix = read_product(url)
    by_mtl = read_product(f"{url}/{product.mtls[0].name}")
    assert by_prefix.product_id == by_mtl.product_id == product.product_id
    assert [str(b.path) for b in by_prefix.bands] == [str(b.path) for b in by_mtl.bands]
    # a plain HTTP server lists nothing: the product by its MTL's URL
    with HttpServer(tmp_path / "local") as http:
        out = tmp_path / "http.tif"
        fill_scene(f"{http.url}/{product.product_id}/{product.mtls[0].name}", out, cluster=ClusterSpec(workers=0),
                   **FAST)
    _same_output(out, _local_fill(product, tmp_path))


def _local_fill(product, tmp_path: Path) -> Path:
    out = tmp_path / "local-ref.tif"
    if not out.exists():
        fill_scene(product.folder, out, cluster=ClusterSpec(workers=0), **FAST)
    return out


@pytest.mark.parametrize("name", ["../other/x_SR_B1.TIF", "sub/x_SR_B1.TIF", "s3://elsewhere/x_SR_B1.TIF"])
def test_file_names_in_a_remote_mtl_stay_inside_its_product(tmp_path, s3, name):
    product = _striped_product(tmp_path / "local")
    mtl = product.mtls[0]
    mtl.write_text(mtl.read_text().replace(product.names["1"], name))
    url = upload_tree(product.folder, new_bucket(), f"c2/{product.product_id}")
    from tilefill._landsat import read_product

    with pytest.raises(TilefillError, match="is not a file name"):
        read_product(url)


# --- STAC ----------------------------------------------------------------------------------------------------

ASSET_KEYS = {"1": "blue", "2": "green", "3": "red", "4": "nir08", "5": "swir16", "7": "swir22"}


def stac_item(product, href, *, item_id: str | None = None, drop: tuple = (), mtl: str = "txt",
              alternate: str | None = None) -> dict:
    """A Landsat Collection 2 Level-2 item as USGS and Earth Search write them: band assets by common name,
    ``qa_pixel``, the MTL under ``mtl.txt`` / ``mtl.json``; ``href(name)`` gives each asset's href."""
    assets = {key: {"href": href(product.names[k]), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "roles": ["data"]} for k, key in ASSET_KEYS.items()}
    assets["qa_pixel"] = {"href": href(product.qa.name), "roles": ["cloud"]}
    mtl_file = next(p for p in product.mtls if p.suffix == f".{mtl}")
    assets[f"mtl.{mtl}"] = {"href": href(mtl_file.name), "roles": ["metadata"]}
    if alternate:
        for a in assets.values():
            a["alternate"] = {"s3": {"href": f"{alternate}/{Path(a['href']).name}"}}
    for key in drop:
        assets.pop(key)
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id or product.product_id,
            "collection": "landsat-c2l2-sr", "geometry": None, "bbox": None,
            "properties": {"datetime": "2010-08-15T10:00:00Z"}, "links": [], "assets": assets}


def test_a_stac_item_file_with_relative_hrefs_is_a_scene_and_a_guide(tmp_path):
    product = _striped_product(tmp_path / "local")
    item = product.folder / "item.json"
    item.write_text(json.dumps(stac_item(product, lambda n: f"./{n}")))
    out = tmp_path / "item.tif"
    res = CliRunner().invoke(main, [str(item), "-o", str(out), "--workers", "0", "--method", "gdal",
                                    "--tile-size", "64", "--overlap", "32", "-q"])
    assert res.exit_code == 0, res.output
    _same_output(out, _local_fill(product, tmp_path))
    # the same product as a guide of another date: read through the item's assets
    other = _striped_product(tmp_path / "other", shift=5, acquired="2010-08-31")
    guided = fill_scene(other.folder, tmp_path / "guided.tif", guides=[item], cluster=ClusterSpec(workers=0),
                        method="llhm", tile_size=64, overlap=32)
    assert guided.gap_pixels > 0
    with rasterio.open(tmp_path / "guided.tif") as ds:
        assert product.product_id in ds.tags()["TILEFILL_GUIDES"] or "item.json" in ds.tags()["TILEFILL_GUIDES"]


def test_a_stac_item_url_reads_its_assets_from_s3_where_requester_pays(tmp_path, s3, monkeypatch):
    product = _striped_product(tmp_path / "local")
    url = upload_tree(product.folder, new_bucket(), f"collection02/{product.product_id}")
    # USGS's shape: href on a web server that needs a login, the requester-pays bucket as the alternate
    doc = stac_item(product, lambda n: f"https://landsatlook.invalid/data/{n}", alternate=url)
    with HttpServer(tmp_path) as http:
        (tmp_path / "item.json").write_text(json.dumps(doc))
        monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")
        fill_scene(f"{http.url}/item.json", tmp_path / "out.tif", cluster=ClusterSpec(workers=0), **FAST)
    _same_output(tmp_path / "out.tif", _local_fill(product, tmp_path))


def test_batch_over_an_item_collection_names_outputs_and_log_records_by_item_id(tmp_path):
    a = _striped_product(tmp_path / "a")
    b = _striped_product(tmp_path / "b", shift=5, acquired="2010-08-31")
    features = [stac_item(p, lambda n, p=p: str(p.folder / n), item_id=f"item-{i}") for i, p in enumerate((a, b))]
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    log = tmp_path / "night.jsonl"
    report = fill_batch([coll], tmp_path / "out", log=log, cluster=ClusterSpec(workers=0), overrides={
        "method": "gdal", "tiles.size": 64, "tiles.overlap": 32})
    assert sorted(o.output.name for o in report.done) == ["item-0.tif", "item-1.tif"]
    scenes = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["scene"] for r in scenes if r.get("type") == "scene"} == {"item-0", "item-1"}
    again = fill_batch([coll], tmp_path / "out", cluster=ClusterSpec(workers=0), overrides={
        "method": "gdal", "tiles.size": 64, "tiles.overlap": 32})
    assert len(again.skipped) == 2


class _StacApi(BaseHTTPRequestHandler):
    """A STAC API with item search (landing page, conformance, POST /search), as pystac-client talks to one."""

    items: list = []
    searches: list = []

    def log_message(self, *args):
        pass

    def _send(self, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        base = f"http://{self.headers['Host']}"
        if self.path.split("?")[0] in ("/", ""):
            self._send({"type": "Catalog", "id": "test-api", "description": "t", "stac_version": "1.0.0",
                        "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                       "https://api.stacspec.org/v1.0.0/item-search",
                                       "https://api.stacspec.org/v1.0.0/item-search#query"],
                        "links": [{"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                                  {"rel": "search", "href": base + "/search", "method": "POST",
                                   "type": "application/geo+json"}]})
        else:
            self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        type(self).searches.append(body)
        self._send({"type": "FeatureCollection", "features": type(self).items, "links": []})


def test_batch_over_a_stac_api_search(tmp_path):
    pytest.importorskip("pystac_client")
    product = _striped_product(tmp_path / "a")
    with HttpServer(tmp_path / "a") as files:
        _StacApi.items = [stac_item(product, lambda n: f"{files.url}/{product.product_id}/{n}")]
        _StacApi.searches = []
        api = ThreadingHTTPServer(("127.0.0.1", 0), _StacApi)
        threading.Thread(target=api.serve_forever, daemon=True).start()
        try:
            res = CliRunner().invoke(main, [
                "batch", "--stac", f"http://127.0.0.1:{api.server_address[1]}/", "--collections", "landsat-c2l2-sr",
                "--bbox", "11.2,47.9,11.9,48.3", "--datetime", "2010-08-01/2010-08-31", "--query",
                "eo:cloud_cover<20", "--output-dir", str(tmp_path / "out"), "--workers", "0", "--method", "gdal",
                "--tile-size", "64", "--overlap", "32", "-q"])
        finally:
            api.shutdown()
            api.server_close()
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / f"{product.product_id}.tif").exists()
    search = _StacApi.searches[0]
    assert search["collections"] == ["landsat-c2l2-sr"] and search["bbox"] == [11.2, 47.9, 11.9, 48.3]
    assert search["datetime"].startswith("2010-08-01") and search["query"] == {"eo:cloud_cover": {"lt": 20}}


# --- bad input by URL: one line, within 30 s, nothing written --------------------------------------------------

def _bad(tmp_path: Path, args: list, env: dict | None = None):
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir(exist_ok=True)
    old = {k: os.environ.get(k) for k in (env or {})}
    for k, v in (env or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    start = time.monotonic()
    try:
        res = CliRunner().invoke(main, [str(args[0]), "-o", str(out), "--workers", "0", "--method", "gdal", "-q",
                                        *map(str, args[1:])])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    took = time.monotonic() - start
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert took < 30 and not list(out.parent.iterdir())
    return lines[0]


def test_a_scene_url_to_an_unreachable_endpoint_fails_in_one_line(tmp_path, s3):
    clear_gdal_cache()
    from servers import free_port

    line = _bad(tmp_path, [f"s3://{new_bucket()}/x.tif"], {"AWS_S3_ENDPOINT": f"127.0.0.1:{free_port()}"})
    assert "cannot read the scene" in line and "no answer from the endpoint" in line


def test_batch_over_an_s3_prefix_fills_its_products_and_rasters_once(tmp_path, s3):
    a = _striped_product(tmp_path / "local" / "2010")
    b = _striped_product(tmp_path / "local" / "2010", shift=5, acquired="2010-08-31")
    shutil.copy(_cog(tmp_path / "scene.tif"), tmp_path / "local" / "loose.tif")
    url = upload_tree(tmp_path / "local", new_bucket(), "archive")
    overrides = {"method": "gdal", "tiles.size": 64, "tiles.overlap": 32}
    report = fill_batch([url + "/"], tmp_path / "out", cluster=ClusterSpec(workers=0), overrides=overrides)
    assert sorted(o.output.name for o in report.done) == sorted([f"{a.product_id}.tif", f"{b.product_id}.tif",
                                                                 "loose.tif"])
    _same_output(tmp_path / "out" / f"{a.product_id}.tif", _local_fill(a, tmp_path))
    again = fill_batch([url], tmp_path / "out", cluster=ClusterSpec(workers=0), overrides=overrides)
    assert len(again.skipped) == 3 and not again.failed
    manifest = tmp_path / "tonight.txt"  # URLs in a manifest: the same scenes, the same outputs
    manifest.write_text(f"# tonight\n{url}/loose.tif\n{url}/2010/{a.product_id}\n")
    listed = fill_batch([], tmp_path / "out", manifest=manifest, cluster=ClusterSpec(workers=0), overrides=overrides)
    assert sorted(o.output.name for o in listed.skipped) == sorted(["loose.tif", f"{a.product_id}.tif"])


def test_an_output_by_url_appears_whole_and_is_not_replaced_unasked(tmp_path, s3, monkeypatch):
    from servers import s3_client

    monkeypatch.chdir(tmp_path)
    values = to_range(smooth_field(2, N, N), "uint16")
    values[:, stripe_mask(N, N, period=16, width_px=3)] = 0
    cog = write_geotiff(tmp_path / "scene.tif", values, nodata=0)
    bucket = new_bucket()
    url = f"s3://{bucket}/restored/scene.tif"
    recipe = dict(config=Path(__file__).with_name("tiny_recipe.yaml"), iterations=5, tile_size=64, overlap=32,
                  cluster=ClusterSpec(workers=0))
    fill_scene(cog, tmp_path / "local.tif", **recipe)
    fill_scene(cog, url, **recipe)
    client = s3_client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    local_sidecars = sorted(p.name for p in tmp_path.glob("local.tif.*"))  # the same sidecars, if any
    assert keys == ["restored/scene.tif", *(f"restored/scene.tif{n[len('local.tif'):]}" for n in local_sidecars)]
    body = client.get_object(Bucket=bucket, Key="restored/scene.tif")["Body"].read()
    assert body == (tmp_path / "local.tif").read_bytes()
    assert not (tmp_path / ".tilefill-staging").exists() or not any((tmp_path / ".tilefill-staging").rglob("*.tif"))
    with pytest.raises(TilefillError, match="exists; pass --overwrite"):
        fill_scene(cog, url, cluster=ClusterSpec(workers=0), **FAST)
    with pytest.raises(TilefillError, match="cannot write s3://tf-no-such-bucket/x.tif"):
        fill_scene(cog, "s3://tf-no-such-bucket/x.tif", cluster=ClusterSpec(workers=0), **FAST)


_READ_ONCE = """
import sys
import tilefill._scene
tilefill._scene.GDAL_CACHE_BYTES = 2**20  # a block cache the scene overflows, as a full-size scene overflows 256 MiB
from tilefill import ClusterSpec, fill_scene
fill_scene(sys.argv[1], sys.argv[2], cluster=ClusterSpec(workers=0), method="gdal", tile_size=256, overlap=32)
"""


@pytest.mark.parametrize("cache, most", [(None, 1.2), ("16000000", None)], ids=["sized by tilefill", "GDAL's 16 MB"])
def test_a_scene_larger_than_the_caches_is_downloaded_once(tmp_path, cache, most):
    """Three passes over a remote scene cost one download: tilefill gives GDAL's cache of remote bytes room for
    the scene before its first remote read (with GDAL's default of 16 MB, the same fill downloads it ~3 times)."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    side = 1600  # 4 bands of noise: 20 MB that deflate cannot shrink, more than GDAL's default 16 MB
    values = rng.integers(1, 60000, size=(4, side, side), dtype=np.uint16)
    values[:, stripe_mask(side, side, period=64, width_px=5)] = 0
    path = write_geotiff(tmp_path / "noise.tif", values, nodata=0)
    with rasterio.open(path) as src:
        profile = {**src.profile, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        cog = tmp_path / "served" / "scene.tif"
        cog.parent.mkdir()
        with rasterio.open(cog, "w", **profile) as dst:
            dst.write(src.read())
    size = cog.stat().st_size
    env = {k: v for k, v in os.environ.items() if k != "CPL_VSIL_CURL_CACHE_SIZE"}
    if cache is not None:
        env["CPL_VSIL_CURL_CACHE_SIZE"] = cache
    with HttpServer(cog.parent) as http:
        before = http.bytes_sent
        subprocess.run([sys.executable, "-c", _READ_ONCE, f"{http.url}/scene.tif", str(tmp_path / "out.tif")],
                       check=True, env=env, timeout=300)
        read = http.bytes_sent - before
    if most is not None:
        assert read <= most * size, f"{read} bytes read of a {size}-byte scene ({read / size:.2f}x)"
    else:  # the check above can fail: without the room, the passes read the scene again
        assert read > 2 * size, f"{read} bytes read of a {size}-byte scene ({read / size:.2f}x)"

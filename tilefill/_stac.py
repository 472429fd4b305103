"""STAC items as scenes: a Landsat Collection 2 item (a file or a URL), item collections and STAC API searches.

An item is read as plain JSON (no STAC library needed): its assets are the product's files, its
MTL asset (``mtl.txt`` / ``mtl.json`` / ``mtl.xml``, any key whose file is ``*_MTL.*``) is the
metadata that says which file is which band, as in a product folder (:mod:`tilefill._landsat`).
A file the MTL names is taken from the asset of that file name (``..._SR_B4.TIF``), so the item's
asset keys (``red``, ``nir08``, ``qa_pixel``) need not follow any one catalogue's naming. Relative
hrefs are resolved against the item's own location (its ``self`` link, else where it was read).

Which href: the asset's ``href``; where the item also gives ``alternate.s3.href`` (USGS items
point ``href`` at landsatlook.usgs.gov, which needs a login, and the alternate at the
requester-pays ``s3://usgs-landsat`` bucket) and ``AWS_REQUEST_PAYER=requester`` is set, that one.

``tilefill batch`` takes item collections (a ``FeatureCollection`` JSON file or URL) and STAC API
searches (:func:`search_items`, through pystac-client: ``pip install "tilefill[stac]"``); each
item's ``id`` names its output (``ID.tif``) and its records in the log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from tilefill._errors import TilefillError
from tilefill._landsat import MTL_FILE, LandsatProduct, product_from_metadata
from tilefill._remote import as_path, is_url, url_join

_MTL_KEYS = ("mtl.txt", "mtl.json", "mtl.xml")


def is_stac_item(path) -> bool:
    """Whether a scene argument names a STAC item by its name: a ``.json`` file that is not a Landsat MTL, or
    a STAC API's item URL (``.../collections/C/items/ID``)."""
    if isinstance(path, StacItem):
        return True
    name = as_path(path).name
    if is_url(path) and "/collections/" in str(path) and str(path).rstrip("/").rsplit("/", 2)[-2] == "items":
        return True
    return name.lower().endswith(".json") and not MTL_FILE.match(name)


def _read_json(path, what: str):
    path = as_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TilefillError(f"cannot read the {what} {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TilefillError(f"the {what} {path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TilefillError(f"the {what} {path} is not JSON ({exc})") from None


def _asset_href(asset: dict) -> str | None:
    href = asset.get("href") if isinstance(asset, dict) else None
    s3 = ((asset.get("alternate") or {}).get("s3") or {}).get("href") if isinstance(asset, dict) else None
    if isinstance(s3, str) and os.environ.get("AWS_REQUEST_PAYER", "").lower() == "requester" and (
            not isinstance(href, str) or href.startswith(("http://", "https://"))):
        return s3
    return href if isinstance(href, str) and href else None


@dataclass(frozen=True)
class StacItem:
    """A STAC item: its ID, where it was read (for relative hrefs and messages) and its assets' hrefs by key."""

    id: str
    location: str
    assets: dict = field(hash=False, compare=False)
    datetime: str | None = None

    def __str__(self) -> str:
        return self.id

    @property
    def name(self) -> str:
        return self.id

    @classmethod
    def from_dict(cls, doc, location: str) -> "StacItem":
        where = f"{location}" if location else "the item"
        if not isinstance(doc, dict) or doc.get("type") != "Feature" or not isinstance(doc.get("assets"), dict):
            raise TilefillError(f"{where} is not a STAC item (a GeoJSON Feature with assets)")
        item_id = doc.get("id")
        if not isinstance(item_id, str) or not item_id or "/" in item_id or item_id in (".", ".."):
            raise TilefillError(f"{where}: the STAC item's id {item_id!r} cannot name an output file")
        self_link = next((link.get("href") for link in doc.get("links") or []
                          if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str)),
                         None)
        base = self_link if self_link and (is_url(self_link) or os.path.isabs(self_link)) else location
        assets = {}
        for key, asset in doc["assets"].items():
            href = _asset_href(asset)
            if href is not None:
                assets[str(key)] = url_join(base, href)
        props = doc.get("properties") if isinstance(doc.get("properties"), dict) else {}
        return cls(item_id, base, assets, props.get("datetime"))

    def product(self) -> LandsatProduct:
        """The Landsat product the item's MTL asset describes, its files taken from the item's assets."""
        mtl = next((self.assets[k] for k in self.assets if k.lower() in _MTL_KEYS), None) or next(
            (h for h in self.assets.values() if MTL_FILE.match(as_path(h).name)), None)
        if mtl is None:
            raise TilefillError(f"STAC item {self.id} has no MTL asset (mtl.txt, mtl.json or mtl.xml): tilefill reads "
                                "a Landsat Collection 2 item's bands and QA_PIXEL through its metadata")
        # the item says what the product has: a file it has no asset for is not looked for beside the MTL
        return product_from_metadata(mtl, {as_path(h).name: as_path(h) for h in self.assets.values()}, item=self.id)


def read_item(path) -> StacItem:
    """A STAC item from a JSON file or URL; refused in one line when it is not one."""
    if isinstance(path, StacItem):
        return path
    return StacItem.from_dict(_read_json(path, "STAC item"), str(path))


def read_items(path) -> list[StacItem]:
    """The items of an item collection (``FeatureCollection``) file or URL, or of a single item."""
    doc = _read_json(path, "STAC item collection")
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        return [StacItem.from_dict(f, str(path)) for f in doc["features"]]
    return [StacItem.from_dict(doc, str(path))]


def is_item_collection(path) -> bool:
    """Whether a batch source names STAC JSON (an item or an item collection) by its name."""
    return not isinstance(path, StacItem) and is_stac_item(path)


_OPERATORS = (("<=", "lte"), (">=", "gte"), ("!=", "neq"), ("<", "lt"), (">", "gt"), ("=", "eq"))


def parse_query(filters: Sequence[str]) -> dict:
    """``["eo:cloud_cover<20", "platform=landsat-7"]`` as the STAC query extension's object, numbers as numbers.

    Examples
    --------
    >>> parse_query(["eo:cloud_cover<20", "platform=landsat-7"])
    {'eo:cloud_cover': {'lt': 20}, 'platform': {'eq': 'landsat-7'}}
    """
    out: dict = {}
    for text in filters:
        for op, name in _OPERATORS:
            prop, sep, raw = text.partition(op)
            if sep and prop.strip() and raw.strip():
                try:
                    value = json.loads(raw.strip())
                except ValueError:
                    value = raw.strip()
                out.setdefault(prop.strip(), {})[name] = value
                break
        else:
            raise TilefillError(f"--query {text!r} is not PROPERTY<VALUE (or <=, >, >=, =, !=), e.g. eo:cloud_cover<20")
    return out


def search_items(url: str, *, collections: Sequence[str] = (), bbox: Sequence[float] | None = None,
                 datetime: str | None = None, query: Sequence[str] = (), max_items: int | None = None
                 ) -> list[StacItem]:
    """The items a STAC API search returns (pystac-client), in its order.

    ``query``: ``"eo:cloud_cover<20"``-style filters (``<``, ``<=``, ``>``, ``>=``, ``=``), passed to the
    API's query extension.
    """
    parse_query(query)  # a malformed filter is refused before any request
    try:
        from pystac_client import Client
        from pystac_client.exceptions import APIError
    except ImportError:
        raise TilefillError('--stac needs pystac-client: pip install "tilefill[stac]"') from None
    try:
        client = Client.open(url)
        search = client.search(collections=list(collections) or None, bbox=list(bbox) if bbox else None,
                               datetime=datetime or None, query=parse_query(query) or None, max_items=max_items)
        docs = list(search.items_as_dicts())
    except APIError as exc:
        raise TilefillError(f"the STAC API at {url} refused the search ({' '.join(str(exc).split())[:300]})") from None
    except Exception as exc:  # connection refused, DNS, a non-STAC answer: one line, whatever the transport says
        raise TilefillError(f"cannot search the STAC API at {url} ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]})") from None
    return [StacItem.from_dict(d, url) for d in docs]



"""Fuzzed readers: damaged GeoTIFFs, masks, band files, gap masks, QA bands and MTL files through ``tilefill``.

Each example is a small real input (``fuzzing.make_inputs``) with one file cut at a byte, flipped in its header
or its data blocks, or (an MTL) with a line dropped, doubled or given an absurd value; ``fuzzing.check`` runs
the command on it and asserts that it ends in a filled output or in one line ``Error: ...`` naming the file,
exit 1, with no traceback, no partial output and no work store left. The examples are drawn by hypothesis,
derandomized (the same examples every run) and bounded; ``benchmarks/fuzz_soak.py`` draws 10,000 and more.
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

import fuzzing
from tilefill._errors import TilefillError
from tilefill._landsat import read_product

EXAMPLES = 60  # about 8 s here


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fuzzing.make_inputs(tmp_path_factory.mktemp("fuzz") / "inputs")


def test_damaged_inputs_are_filled_or_refused_in_one_line_naming_the_file(inputs, tmp_path):
    seen: Counter = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(fuzzing.cases())
    def one(case):
        outcome, line = fuzzing.check(case, inputs, tmp_path)
        seen[outcome if outcome == "filled" else fuzzing.kind_of(line)] += 1

    one()
    # the examples reach both ends of the contract, and the read failures the readers must name
    assert seen["filled"] and sum(seen.values()) - seen["filled"] >= EXAMPLES // 4, seen
    assert seen["cannot read the input's pixels"] and seen["not a raster GDAL can read"], seen


def test_an_xml_metadata_file_in_an_unknown_encoding_is_one_line(inputs, tmp_path):
    """Found by fuzzing: a flipped byte in ``encoding="UTF-8"`` made ElementTree raise LookupError."""
    folder = tmp_path / "c2-xml"
    shutil.copytree(inputs / "c2-xml", folder)
    mtl = next(folder.glob("*_MTL.xml"))
    mtl.write_text(mtl.read_text().replace('encoding="UTF-8"', 'encoding="UTF-o"'))
    with pytest.raises(TilefillError, match=r"cannot read the metadata file .*_MTL\.xml \(LookupError"):
        read_product(folder)

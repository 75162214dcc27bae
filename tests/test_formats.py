"""Reader reach (issue 10): user values win, names wherever files keep them, inForm fields and
mosaics, bioformats2raw and odd NGFF stores, TIFF folders, brightfield refusal, stale OME-XML."""

from __future__ import annotations

import json
import logging
import pickle
import re

import dask
import numpy as np
import pytest
import tifffile
import zarr

from tlsquant import open_slide
from tlsquant.errors import ChannelError, PixelSizeError, SlideFormatError
from tlsquant.markers import find_marker, marker_key, unique_names

CM = "CENTIMETER"


def _res(pixel_size_um: float) -> tuple[float, float]:
    return (1e4 / pixel_size_um, 1e4 / pixel_size_um)


# -- 1. explicit pixel size and names win --------------------------------------------------------


def _pixel_unit_file(path, data):
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CYX", "PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "pixel", "PhysicalSizeY": 1.0,
        "PhysicalSizeYUnit": "pixel", "Channel": {"Name": ["DAPI", "CD20"]}})
    return path


def test_pixel_size_from_user_beats_pixel_unit_and_implausible_values(tmp_path, rng):
    data = rng.integers(0, 255, (2, 32, 48), dtype=np.uint8)
    pixel_unit = _pixel_unit_file(tmp_path / "pixelunit.ome.tif", data)
    with pytest.raises(PixelSizeError, match="'pixel', which is not a physical unit; pass"):
        open_slide(pixel_unit)
    slide = open_slide(pixel_unit, pixel_size_um=0.5)
    assert slide.pixel_size_um == 0.5 and slide.metadata["pixel_size_source"] == "user"
    assert "not a physical unit" in slide.metadata["pixel_size_file_problem"]

    bogus = tmp_path / "bogus.ome.tif"
    tifffile.imwrite(bogus, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 10000.0, "PhysicalSizeY": 10000.0})
    slide = open_slide(bogus, pixel_size_um=(0.65, 0.66), channel_names=["DAPI", "CD20"])
    assert (slide.pixel_size_x_um, slide.pixel_size_y_um) == (0.65, 0.66)
    assert slide.metadata["pixel_size_file_um"] == [10000.0, 10000.0]
    assert "user 0.65 x 0.66 µm/px overrides the file's 10000" in slide.metadata["pixel_size_disagreement"]


def test_user_names_win_and_the_files_names_are_kept(tmp_path, rng):
    path = _pixel_unit_file(tmp_path / "named.ome.tif", rng.integers(0, 255, (2, 32, 48), dtype=np.uint8))
    slide = open_slide(path, pixel_size_um=0.5, channel_names=["Hoechst", "MS4A1"])
    assert slide.channel_names == ("Hoechst", "MS4A1")
    assert slide.metadata["channel_names_source"] == "user"
    assert slide.metadata["channel_names_file"] == ["DAPI", "CD20"]
    with pytest.raises(ChannelError, match="channel_names has 1 names"):
        open_slide(path, pixel_size_um=0.5, channel_names=["DAPI"])


def test_cli_info_pixel_size_overrides_a_pixel_unit(tmp_path, rng, capsys):
    from tlsquant.cli import main

    path = _pixel_unit_file(tmp_path / "pixelunit.ome.tif", rng.integers(0, 255, (2, 32, 48), dtype=np.uint8))
    assert main(["info", str(path), "--pixel-size", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "0.5 x 0.5 µm/px (user)" in out and "not a physical unit" in out
    assert main(["info", str(path)]) == 1
    out = capsys.readouterr().out
    assert "supply: the pixel size" in out and "OME PhysicalSizeX/Y" not in out


# -- 2. names wherever files keep them, tolerant matching -----------------------------------------


@pytest.mark.parametrize("written", ["CD20", "CD-20", "cd20 (164)", "CD20 Opal 520", "164Dy_CD20", "CD20 (Dy164)",
                                     "Opal 520 CD20", "Cy5_CD20", "CD20 - BX007", "CD20 : Opal 520", "AF488-CD20"])
def test_marker_matching_tolerates_case_separators_and_tags(written):
    assert marker_key(written) == "cd20"
    assert find_marker(["DAPI", written, "CD3"], "CD20") == 1
    assert find_marker(["DAPI", written], "cd-20") == 1


def test_marker_matching_keeps_distinct_markers_apart():
    assert find_marker(["CD3D", "CD45RO"], "CD3") is None
    assert find_marker(["Opal 520", "Opal 570"], "Opal 570") == 1
    assert find_marker(["CD20 (164)", "CD20 (165)"], "CD20") is None  # ambiguous
    assert find_marker(["Cy5_CD20", "Cy3_CD20"], "CD20") is None  # two fluorophores, one marker: ambiguous
    assert marker_key("Marker_Ki67") == "markerki67"
    assert marker_key("Opal 520") == "opal520" and marker_key("Cy5") == "cy5"  # only a tag: kept
    assert find_marker(["DAPI", "Opal 520", "Opal 570"], "Opal 570") == 2


def test_repeated_names_are_made_unique_and_matching_finds_the_first():
    names, repeated = unique_names(["DAPI", "CD20", "dapi", "Blank", "DAPI", "Blank"])
    assert names == ["DAPI", "CD20", "dapi (2)", "Blank", "DAPI (3)", "Blank (2)"]
    assert repeated == {"DAPI": 3, "Blank": 2}
    assert unique_names(["A", "A", "A (2)"])[0] == ["A", "A (3)", "A (2)"]  # never a name already taken
    assert find_marker(names, "dapi") == 0 and find_marker(names, "DAPI (3)") == 4
    assert find_marker(["CD20 Opal 520", "CD3", "CD20 Opal 520 (2)"], "CD20") == 0  # repeats of one: the first


def test_names_from_pagename_tags_json_and_xml_descriptions(tmp_path, rng):
    data = rng.integers(0, 255, (3, 24, 32), dtype=np.uint8)
    mibi = tmp_path / "mibi.tif"
    with tifffile.TiffWriter(mibi) as tw:
        for plane, name in zip(data, ["dsDNA (89)", "CD20 (164)", "CD3 (159)"]):
            tw.write(plane, metadata=None, extratags=[(285, "s", 0, name, True)],
                     resolution=_res(0.39), resolutionunit=CM)
    slide = open_slide(mibi)
    assert slide.channel_names == ("dsDNA (89)", "CD20 (164)", "CD3 (159)")
    assert slide.metadata["channel_names_source"] == "TIFF PageName tags"
    assert slide.channel_index("CD20") == 1 and slide.has_channel("cd-3")

    described = tmp_path / "json.tif"
    with tifffile.TiffWriter(described) as tw:
        for plane, name in zip(data, ["DAPI", "CD20", "CD3"]):
            tw.write(plane, metadata=None, description=json.dumps({"channel.target": name, "channel.mass": 1}),
                     resolution=_res(0.5), resolutionunit=CM)
    assert open_slide(described).channel_names == ("DAPI", "CD20", "CD3")

    xml = tmp_path / "xml.tif"
    with tifffile.TiffWriter(xml) as tw:
        for plane, name in zip(data, ["DAPI", "CD20", "CD3"]):
            tw.write(plane, metadata=None, description=f"<Channel><Marker>{name}</Marker></Channel>",
                     resolution=_res(0.5), resolutionunit=CM)
    slide = open_slide(xml)
    assert slide.channel_names == ("DAPI", "CD20", "CD3")
    assert slide.metadata["channel_names_source"] == "per-page XML descriptions"


def test_ome_fluor_when_no_name(tmp_path, rng):
    path = tmp_path / "fluor.ome.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (2, 24, 32), dtype=np.uint8), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Fluor": ["DAPI", "Opal 520"]}})
    slide = open_slide(path, marker_map={"Opal 520": "CD20"})
    assert slide.channel_names == ("DAPI", "CD20")
    assert slide.metadata["channel_names_before_marker_map"] == ["DAPI", "Opal 520"]


def test_markers_csv_beside_the_image(tmp_path, rng):
    project = tmp_path / "project"
    (project / "registration").mkdir(parents=True)
    image = project / "registration" / "core.ome.tif"
    tifffile.imwrite(image, rng.integers(0, 255, (3, 24, 32), dtype=np.uint8), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    (project / "markers.csv").write_text("cycle,marker_name,exposure\n1,DNA_1,100\n1,CD20,100\n1,CD3D,100\n")
    slide = open_slide(image)
    assert slide.channel_names == ("DNA_1", "CD20", "CD3D")
    assert slide.metadata["channel_names_source"].startswith("marker list ")
    assert open_slide(image, channel_names=["a", "b", "c"]).channel_names == ("a", "b", "c")
    (project / "markers.csv").write_text("marker_name\nDNA_1\nCD20\n")
    slide = open_slide(image)
    assert slide.channel_names[0] == "Channel 1"
    assert "lists 2 markers but the image has 3 channels" in slide.metadata["channel_names_sidecar_ignored"]


# -- 4. OME-Zarr in the wild ---------------------------------------------------------------------


def _ngff_image(group, data, *, version="0.4", unit="micrometer", scale=0.5, labels=None, axes="cyx"):
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    axis_list = [{"name": a, "type": "channel" if a == "c" else "space" if a in "yxz" else "time"} for a in axes]
    for axis in axis_list:
        if axis["name"] in "yx" and unit:
            axis["unit"] = unit
    multiscales = [{"version": version, "axes": axis_list, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * (len(axes) - 2) + [scale, scale]}]}]}]
    attrs = {"multiscales": multiscales}
    if labels is not None:
        attrs["omero"] = {"channels": [{"label": label} for label in labels]}
    group.attrs.update({"ome": {"version": version, **attrs}} if version.startswith("0.5") else attrs)


def test_bioformats2raw_layout_names_and_size_from_ome_xml(tmp_path, rng):
    root_path = tmp_path / "b2r.zarr"
    root = zarr.open_group(str(root_path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    small = rng.integers(0, 255, (1, 1, 1, 8, 8), dtype=np.uint8)
    big = rng.integers(0, 255, (1, 2, 1, 40, 30), dtype=np.uint16)
    _ngff_image(root.create_group("0"), small, unit=None, axes="tczyx")  # a label image first
    _ngff_image(root.create_group("1"), big, unit=None, axes="tczyx")
    root.create_group("OME")
    (root_path / "OME" / "METADATA.ome.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0" Name="label"><Pixels SizeC="1" SizeX="8" SizeY="8" SizeZ="1" SizeT="1" Type="uint8">'
        '<Channel ID="Channel:0:0"/></Pixels></Image>'
        '<Image ID="Image:1" Name="slide"><Pixels PhysicalSizeX="325" PhysicalSizeXUnit="nm" PhysicalSizeY="325" '
        'PhysicalSizeYUnit="nm" SizeC="2" SizeX="30" SizeY="40" SizeZ="1" SizeT="1" Type="uint16">'
        '<Channel ID="Channel:1:0" Name="DAPI"/><Channel ID="Channel:1:1" Name="CD20"/></Pixels></Image></OME>')
    slide = open_slide(root_path)
    assert slide.shape == (2, 40, 30) and slide.channel_names == ("DAPI", "CD20")
    assert slide.pixel_size_um == pytest.approx(0.325)
    assert slide.metadata["bioformats2raw_series"] == "1" and slide.metadata["other_series"] == ["0"]
    np.testing.assert_array_equal(slide.levels[0].data.compute(), big[0, :, 0])


def test_ngff_version_suffix_units_and_dtype_conversion(tmp_path, rng):
    data = rng.random((3, 12, 16))  # float64, as SpatialData writes
    group = zarr.open_group(str(tmp_path / "sd.ome.zarr"), mode="w", zarr_format=2)
    _ngff_image(group, data, version="0.4-dev-spatialdata", unit="unit", labels=[0, 1, 2])
    with pytest.raises(PixelSizeError, match="unknown length unit 'unit'"):
        open_slide(tmp_path / "sd.ome.zarr")
    slide = open_slide(tmp_path / "sd.ome.zarr", pixel_size_um=1.0)
    assert slide.dtype == np.float32 and slide.metadata["dtype_conversion"] == "pixel type float64 read as float32"
    assert slide.channel_names == ("Channel 1", "Channel 2", "Channel 3")  # numeric labels name nothing
    np.testing.assert_allclose(slide.levels[0].data.compute(), data.astype(np.float32))

    ints = zarr.open_group(str(tmp_path / "i16.ome.zarr"), mode="w", zarr_format=3)
    _ngff_image(ints, rng.integers(-50, 50, (2, 8, 8), dtype=np.int16), version="0.5", labels=["DAPI", "CD20"])
    slide = open_slide(tmp_path / "i16.ome.zarr")
    assert slide.dtype == np.float32 and slide.channel_names == ("DAPI", "CD20")
    assert slide.metadata["ngff_version"] == "0.5" and "reader_warnings" not in slide.metadata


def test_hcs_plate_error_names_the_wells(tmp_path, rng):
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=2)
    plate.attrs["plate"] = {"wells": [{"path": "A/1"}, {"path": "B/3"}], "version": "0.4"}
    well = plate.create_group("A").create_group("1")
    well.attrs["well"] = {"images": [{"path": "0"}]}
    _ngff_image(well.create_group("0"), rng.integers(0, 255, (2, 8, 8), dtype=np.uint8), labels=["DAPI", "CD20"])
    with pytest.raises(SlideFormatError, match=r"HCS plate with 2 wells \(A/1, B/3\).*plate.zarr/A/1/0"):
        open_slide(tmp_path / "plate.zarr")
    with pytest.raises(SlideFormatError, match="HCS well with 1 fields"):
        open_slide(tmp_path / "plate.zarr" / "A" / "1")
    assert open_slide(tmp_path / "plate.zarr" / "A" / "1" / "0").channel_names == ("DAPI", "CD20")


# -- 5. a folder of single-channel TIFFs ----------------------------------------------------------


def test_tiff_folder_is_one_lazy_slide(tmp_path, rng):
    folder = tmp_path / "point1"
    folder.mkdir()
    data = rng.integers(0, 255, (3, 40, 56), dtype=np.uint8)
    for plane, name in zip(data, ["CD20", "CD3", "dsDNA"]):
        tifffile.imwrite(folder / f"{name}.tif", plane, compression="packbits")
    with pytest.raises(PixelSizeError, match="records no physical pixel size"):
        open_slide(folder)
    slide = open_slide(folder, pixel_size_um=0.5, chunk_size=16)
    assert slide.format == "tiff-folder" and slide.shape == (3, 40, 56)
    assert slide.channel_names == ("CD20", "CD3", "dsDNA")
    graph = pickle.loads(pickle.dumps(slide.levels[0].data))  # tasks carry paths, not handles
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(graph.compute(), data)

    tifffile.imwrite(folder / "CD8.tif", data[0, :30])
    with pytest.raises(SlideFormatError, match=r"CD8.tif is 30 x 56 px uint8, expected 40 x 56 px uint8"):
        open_slide(folder, pixel_size_um=0.5)
    tifffile.imwrite(folder / "CD8.tif", data[0].astype(np.uint16))
    with pytest.raises(SlideFormatError, match="same shape and pixel type"):
        open_slide(folder, pixel_size_um=0.5)
    tifffile.imwrite(folder / "CD8.tif", data[:2])
    with pytest.raises(SlideFormatError, match="CD8.tif: holds 2 channels"):
        open_slide(folder, pixel_size_um=0.5)
    (folder / "CD8.tif").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideFormatError, match="no .tif/.tiff files"):
        open_slide(empty)


# -- 3. Akoya inForm component exports ------------------------------------------------------------


def _inform_description(name: str, image_type: str = "FullResolution") -> str:
    return ('<?xml version="1.0" encoding="utf-16"?>\r\n<PerkinElmer-QPI-ImageDescription>'
            f"<DescriptionVersion>2</DescriptionVersion><ImageType>{image_type}</ImageType>"
            f"<IsUnmixedComponent>True</IsUnmixedComponent><Name>{name}</Name>"
            "<ScanProfile><root><Stain><Name>not a channel</Name></Stain></root></ScanProfile>"
            "</PerkinElmer-QPI-ImageDescription>")


FLUORS = ["DAPI", "Opal 520", "Opal 690"]


def write_inform_field(path, planes, *, pixel_size_um=0.5, top_left_um=None):
    """An inForm component_data.tif: float32 pages, one per component, an RGB thumbnail last."""
    extratags = []
    if top_left_um is not None:  # XPosition/YPosition in the resolution unit (cm)
        extratags = [(286, 5, 1, (int(round(top_left_um[0] * 100)), 1_000_000), True),
                     (287, 5, 1, (int(round(top_left_um[1] * 100)), 1_000_000), True)]
    with tifffile.TiffWriter(path) as tw:
        for plane, name in zip(planes, FLUORS):
            tw.write(plane.astype(np.float32), metadata=None, description=_inform_description(name),
                     resolution=_res(pixel_size_um), resolutionunit=CM, compression="lzw", extratags=extratags)
        tw.write(np.zeros((8, 8, 3), np.uint8), photometric="rgb", metadata=None,
                 description=_inform_description("", "Thumbnail"))
    return path


def test_inform_single_field_and_fluorophore_map(tmp_path, rng):
    planes = rng.random((3, 30, 40), dtype=np.float32)
    path = write_inform_field(tmp_path / "case_[1000,2000]_component_data.tif", planes)
    slide = open_slide(path)
    assert slide.format == "inform-component" and slide.channel_names == tuple(FLUORS)
    assert slide.dtype == np.float32 and slide.pixel_size_um == pytest.approx(0.5)
    mapped = open_slide(path, marker_map={"opal 520": "CD20", "Opal 690": "CD3"})
    assert mapped.channel_names == ("DAPI", "CD20", "CD3")
    np.testing.assert_array_equal(mapped.channel("CD20").compute(), planes[1])


def _mosaic_truth(fields, shape):
    """Nearest-centre compositing written out pixel by pixel (the rule the reader documents)."""
    truth = np.zeros((3, *shape), np.float32)
    best = np.full(shape, np.inf)
    for (y0, x0), planes in fields:
        h, w = planes.shape[1:]
        for y in range(y0, y0 + h):
            for x in range(x0, x0 + w):
                d = (y + 0.5 - y0 - h / 2) ** 2 + (x + 0.5 - x0 - w / 2) ** 2
                if d < best[y, x]:
                    best[y, x] = d
                    truth[:, y, x] = planes[:, y - y0, x - x0]
    return truth


@pytest.mark.parametrize("placement", ["tags", "file names"])
def test_inform_mosaic_places_fields_by_stage_position(tmp_path, rng, placement):
    folder = tmp_path / "slide"
    folder.mkdir()
    # four 20 x 30 px fields at 0.5 µm/px on a stage offset; they overlap by 4 px and 6 px
    corners_px = [(0, 0), (0, 24), (16, 0), (16, 24)]
    stage_um = (5000.0, 12000.0)  # (x, y) of the mosaic's top-left corner
    fields = []
    for k, (y0, x0) in enumerate(corners_px):
        planes = rng.random((3, 20, 30), dtype=np.float32) + k
        left_um, top_um = stage_um[0] + x0 * 0.5, stage_um[1] + y0 * 0.5
        centre = (left_um + 15 * 0.5, top_um + 10 * 0.5)
        name = f"S1_[{centre[0]:g},{centre[1]:g}]_component_data.tif"
        write_inform_field(folder / name, planes, top_left_um=(left_um, top_um) if placement == "tags" else None)
        fields.append(((y0, x0), planes))
    slide = open_slide(folder, chunk_size=16)
    assert slide.format == "inform-mosaic" and slide.shape == (3, 36, 54)
    assert slide.metadata["fields"] == 4
    expected_source = "TIFF XPosition/YPosition tags" if placement == "tags" else "inForm file names"
    assert slide.metadata["field_positions_source"].startswith(expected_source)
    graph = pickle.loads(pickle.dumps(slide.levels[0].data))
    np.testing.assert_array_equal(graph.compute(), _mosaic_truth(fields, (36, 54)))


def test_inform_mosaic_refuses_mismatched_or_unplaceable_fields(tmp_path, rng):
    folder = tmp_path / "slide"
    folder.mkdir()
    write_inform_field(folder / "a_component_data.tif", rng.random((3, 10, 10), dtype=np.float32))
    write_inform_field(folder / "b_component_data.tif", rng.random((3, 10, 10), dtype=np.float32))
    with pytest.raises(SlideFormatError, match="cannot place inForm fields a_component_data.tif"):
        open_slide(folder)
    with tifffile.TiffWriter(folder / "b_component_data.tif") as tw:
        tw.write(np.zeros((10, 10), np.float32), metadata=None, description=_inform_description("DAPI"),
                 resolution=_res(0.5), resolutionunit=CM)
    with pytest.raises(SlideFormatError, match="field b_component_data.tif has components"):
        open_slide(folder)


# -- 6. brightfield RGB ---------------------------------------------------------------------------


def test_brightfield_rgb_is_refused_before_any_channel_error(tmp_path, rng):
    rgb = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    svs = tmp_path / "he.svs"
    tifffile.imwrite(svs, rgb, photometric="rgb", description="Aperio Image Library v12.0.15\r\n48x32 |AppMag = 40|MPP = 0.2527")
    with pytest.raises(SlideFormatError, match=r"brightfield RGB image \(Aperio SVS.*0.2527 µm/px from Aperio MPP\); tlsquant needs multiplex fluorescence"):
        open_slide(svs, channel_names=["only one"])
    plain = tmp_path / "he.tif"
    tifffile.imwrite(plain, rgb, photometric="rgb")
    with pytest.raises(SlideFormatError, match="brightfield RGB image"):
        open_slide(plain, pixel_size_um=0.5)


# -- 7. OME-XML that disagrees with the pixels ----------------------------------------------------


def _stale_ome(path, data, **changes):
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                     "Channel": {"Name": ["DAPI", "CD20", "CD3"]}})
    xml = tifffile.TiffFile(path).ome_metadata
    for key, value in changes.items():
        xml = xml.replace(f'{key}="{dict(SizeC=3, SizeY=data.shape[1], SizeX=data.shape[2])[key]}"', f'{key}="{value}"')
    with tifffile.TiffWriter(path) as tw:
        for index, plane in enumerate(data):
            tw.write(plane, description=xml if index == 0 else None, metadata=None)
    return path


@pytest.mark.parametrize("changes, words", [
    ({"SizeC": 5}, "promises 5 planes but the file holds only 3"),
    ({"SizeX": 96, "SizeY": 80}, "says 3 planes of 80 x 96 px"),
    ({"SizeC": 40, "SizeY": 3}, "says 40 planes of 3 x 48 px"),  # SizeC and SizeY swapped
    ({"SizeC": 2}, "says 2 planes of 40 x 48 px (SizeC/Z/T, SizeY, SizeX) but the file stores 3"),  # never drop one
])
def test_stale_ome_xml_is_read_as_stored_with_a_warning(tmp_path, rng, changes, words, caplog):
    data = rng.integers(1, 255, (3, 40, 48), dtype=np.uint8)
    caplog.set_level(logging.ERROR, logger="tifffile")
    slide = open_slide(_stale_ome(tmp_path / "stale.ome.tif", data, **changes), pixel_size_um=0.5)
    assert slide.shape == (3, 40, 48)
    assert any(words in warning for warning in slide.metadata["reader_warnings"])
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data)  # no zero-filled planes


# -- 8. tlsquant info ----------------------------------------------------------------------------


def test_info_names_every_source_and_what_is_missing(tmp_path, rng, capsys):
    from tlsquant.cli import main

    folder = tmp_path / "point1"
    folder.mkdir()
    for name in ("CD20", "dsDNA"):
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    good = write_inform_field(tmp_path / "f_component_data.tif", rng.random((3, 12, 12), dtype=np.float32))
    assert main(["info", str(folder), str(good)]) == 1  # one of two files cannot be opened as is
    out = capsys.readouterr().out
    assert "point1" in out and "supply: the pixel size (--pixel-size UM" in out
    assert "channels      CD20, dsDNA  (file names (one TIFF per channel))" in out
    assert "inForm component <Biomarker>/<Name>" in out and "tiff resolution tags" in out
    assert main(["info", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "inform-component"


# -- 9. what the reader audit found --------------------------------------------------------------


def _qptiff_description(image_type: str, name: str) -> str:
    return ('<?xml version="1.0" encoding="utf-16"?><PerkinElmer-QPI-ImageDescription>'
            f"<DescriptionVersion>2</DescriptionVersion><ImageType>{image_type}</ImageType><Name>{name}</Name>"
            "</PerkinElmer-QPI-ImageDescription>")


def test_brightfield_qptiff_and_16_bit_rgb_are_refused(tmp_path, rng):
    qptiff = tmp_path / "he.qptiff"
    with tifffile.TiffWriter(qptiff) as tw:  # Vectra Polaris brightfield: one RGB FullResolution page
        tw.write(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8), photometric="rgb", metadata=None,
                 description=_qptiff_description("FullResolution", "Brightfield"), resolution=_res(0.5),
                 resolutionunit=CM)
    with pytest.raises(SlideFormatError, match=r"he.qptiff: this is a brightfield RGB image \(Akoya QPTIFF, 3 x uint8"):
        open_slide(qptiff)
    rgb16 = tmp_path / "he16.tif"
    tifffile.imwrite(rgb16, rng.integers(0, 65535, (32, 40, 3), dtype=np.uint16), photometric="rgb")
    with pytest.raises(SlideFormatError, match=r"brightfield RGB image \(RGB TIFF, 3 x uint16"):
        open_slide(rgb16, pixel_size_um=0.5)


def test_repeated_channel_names_in_files_and_marker_lists(tmp_path, rng, capsys):
    from tlsquant.cli import main

    data = rng.integers(0, 255, (4, 24, 32), dtype=np.uint8)
    comet = tmp_path / "comet.ome.tif"  # COMET writes a DAPI per cycle
    tifffile.imwrite(comet, data, ome=True, metadata={
        "axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": ["DAPI", "CD20", "CD3", "DAPI"]}})
    slide = open_slide(comet)
    assert slide.channel_names == ("DAPI", "CD20", "CD3", "DAPI (2)")
    assert slide.metadata["channel_names_repeated"] == {"DAPI": 2}
    assert slide.channel_index("dapi") == 0 and slide.channel_index("DAPI (2)") == 3
    np.testing.assert_array_equal(slide.channel("DAPI (2)").compute(), data[3])
    assert main(["info", str(comet)]) == 0
    assert "repeats are read as DAPI (2)" in capsys.readouterr().out.replace("\n", " ")
    with pytest.raises(ChannelError, match="unique.*repeated: DAPI"):  # names the user gives stay checked
        open_slide(comet, channel_names=["DAPI", "CD20", "CD3", "dapi"])

    image = tmp_path / "core.ome.tif"
    tifffile.imwrite(image, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    (tmp_path / "markers.csv").write_text("cycle,marker_name\n1,Blank\n1,CD20\n2,Blank\n2,Blank\n")
    slide = open_slide(image)
    assert slide.channel_names == ("Blank", "CD20", "Blank (2)", "Blank (3)")
    assert any("Blank x3" in warning for warning in slide.metadata["reader_warnings"])


def test_inform_folder_of_several_slides_or_resolutions_is_refused(tmp_path, rng):
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("SlideA_[5000,12000]", "SlideA_[5015,12000]", "SlideB_[40000,9000]"):
        write_inform_field(batch / f"{name}_component_data.tif", rng.random((3, 10, 12), dtype=np.float32))
    with pytest.raises(SlideFormatError, match=r"fields of 2 slides or cores: SlideA \(2 fields\), SlideB \(1 field\); "
                                               r"a mosaic is one slide: move each slide's fields into a folder"):
        open_slide(batch)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_inform_field(mixed / "S_[1000,1000]_component_data.tif", rng.random((3, 10, 12), dtype=np.float32))
    write_inform_field(mixed / "S_[1006,1000]_component_data.tif", rng.random((3, 10, 12), dtype=np.float32),
                       pixel_size_um=0.25)
    with pytest.raises(SlideFormatError, match=r"S_\[1006,1000\]_component_data.tif has pixel size 0.25 x 0.25 µm/px, "
                                               r"expected 0.5 x 0.5 µm/px"):
        open_slide(mixed, pixel_size_um=0.5)


def test_inform_mosaic_user_pixel_size_places_named_fields_and_sparse_fields_warn(tmp_path, rng):
    folder = tmp_path / "slide"
    folder.mkdir()
    for centre_x in (1000, 1010):  # 10 µm apart: 20 px at the files' 0.5 µm/px, 40 px at 0.25
        write_inform_field(folder / f"S_[{centre_x},500]_component_data.tif", rng.random((3, 10, 12), dtype=np.float32))
    assert open_slide(folder).shape == (3, 10, 32)
    slide = open_slide(folder, pixel_size_um=0.25)
    assert slide.shape == (3, 10, 52) and slide.pixel_size_um == 0.25
    assert "reader_warnings" not in slide.metadata

    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for centre_x in (1000, 1500):  # 1000 px apart: two 12 px wide fields cover 2.4 % of the box
        write_inform_field(sparse / f"S_[{centre_x},500]_component_data.tif", rng.random((3, 10, 12), dtype=np.float32))
    slide = open_slide(sparse)
    assert slide.shape == (3, 10, 1012)
    assert any("the 2 fields cover only 2.4% of the mosaic's 10 x 1012 px" in w for w in slide.metadata["reader_warnings"])


@pytest.mark.parametrize("tile", [None, (16, 16)])
def test_planar_separate_samples_are_channels(tmp_path, rng, tile):
    data = rng.integers(0, 65535, (3, 40, 48), dtype=np.uint16)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="separate", tile=tile,
                     resolution=_res(0.5), resolutionunit=CM)
    slide = open_slide(path, chunk_size=16)
    assert slide.shape == (3, 40, 48) and slide.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data)


def test_z_stacks_and_time_series_are_refused(tmp_path, rng):
    stack = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    ome = tmp_path / "z.ome.tif"
    tifffile.imwrite(ome, stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with pytest.raises(SlideFormatError, match=r"z.ome.tif: a z-stack: axis 'Z' has 3 planes \(axes 'ZYX'.*"
                                               r"needs one 2-D multichannel image.*maximum projection"):
        open_slide(ome)
    imagej = tmp_path / "t.tif"
    tifffile.imwrite(imagej, stack, imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(SlideFormatError, match="t.tif: a time series: axis 'T' has 3 planes.*one time point"):
        open_slide(imagej, pixel_size_um=0.5)
    group = zarr.open_group(str(tmp_path / "z.ome.zarr"), mode="w", zarr_format=2)
    _ngff_image(group, stack[:, None], axes="zcyx")
    with pytest.raises(SlideFormatError, match="a z-stack: axis 'z' has 3 planes.*maximum projection"):
        open_slide(tmp_path / "z.ome.zarr")


@pytest.mark.parametrize("name, head, found", [
    ("scan.czi", b"ZISRAWFILE" + b"\0" * 22, "Zeiss CZI"),
    ("renamed.bin", b"ZISRAWFILE" + b"\0" * 22, "Zeiss CZI"),  # by its first bytes
    ("exp.lif", b"\x70\0\0\0\x10\0\0\0\x2a" + b"\0" * 23, "Leica LIF"),
    ("well.nd2", b"\xda\xce\xbe\x0a" + b"\0" * 28, "Nikon ND2"),
    ("slide.mrxs", b"[GENERAL]\n", "3DHISTECH MRXS"),
    ("slide.vsi", b"II*\x00" + b"\0" * 28, "Olympus/Evident VSI"),  # a TIFF wrapper: refused by its name
    ("overview.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 24, "PNG"),
], ids=["czi", "czi-by-magic", "lif", "nd2", "mrxs", "vsi", "png"])
def test_vendor_formats_are_named_with_a_conversion(tmp_path, name, head, found):
    path = tmp_path / name
    path.write_bytes(head)
    with pytest.raises(SlideFormatError, match=rf"{name}: detected format {re.escape(found)}; tlsquant reads TIFF .*"
                                               r"bfconvert .*\(OME-TIFF\) or 'bioformats2raw .*\(OME-Zarr\)"):
        open_slide(path)


def test_multi_scene_ome_tiff_says_which_image_is_read(tmp_path, rng):
    scenes = rng.integers(0, 255, (2, 2, 16, 16), dtype=np.uint8)
    path = tmp_path / "scenes.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        for scene, (name, markers) in zip(scenes, [("scene A", ["DAPI", "CD20"]), ("scene B", ["DAPI", "CD3"])]):
            tw.write(scene, metadata={"axes": "CYX", "Name": name, "Channel": {"Name": markers},
                                      "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(np.zeros((8, 8, 3), np.uint8), photometric="rgb", metadata={"axes": "YXS", "Name": "label"})
    slide = open_slide(path)
    assert slide.channel_names == ("DAPI", "CD20") and slide.metadata["ome_images"] == 3
    np.testing.assert_array_equal(slide.levels[0].data.compute(), scenes[0])
    warning = " ".join(slide.metadata["reader_warnings"])
    assert "holds 2 images; read image 0 'scene A'" in warning and "ignored 1 'scene B'" in warning
    assert "bfconvert -series" in warning and "label" not in warning


def test_hidden_files_in_a_channel_folder_are_skipped(tmp_path, rng):
    folder = tmp_path / "point"
    folder.mkdir()
    for name in ("CD20", "dsDNA"):
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (folder / "._CD20.tif").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 20)  # macOS AppleDouble
    assert open_slide(folder, pixel_size_um=0.5).channel_names == ("CD20", "dsDNA")


def test_ngff_channel_axis_found_by_its_type(tmp_path, rng):
    data = rng.integers(0, 255, (2, 8, 8), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "ch.ome.zarr"), mode="w", zarr_format=2)
    _ngff_image(group, data, labels=["DAPI", "CD20"])
    group.attrs["multiscales"] = [{**group.attrs["multiscales"][0], "axes": [
        {"name": "ch", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]}]
    slide = open_slide(tmp_path / "ch.ome.zarr")
    assert slide.channel_names == ("DAPI", "CD20")
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data)


@pytest.mark.parametrize("unit, per_px", [("nm", 500.0), ("mm", 0.0005), ("micron", 0.5), ("\\u00B5m", 0.5), ("um", 0.5)])
def test_imagej_length_units_are_converted(tmp_path, rng, unit, per_px):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (2, 8, 8), dtype=np.uint8), imagej=True,
                     resolution=(1 / per_px, 1 / per_px), metadata={"axes": "CYX", "unit": unit})
    slide = open_slide(path)
    assert slide.pixel_size_um == pytest.approx(0.5)
    assert slide.metadata["pixel_size_source"] == "ImageJ unit + resolution tags"


def test_bioformats2raw_series_are_listed_by_number(tmp_path, rng):
    root_path = tmp_path / "b2r.zarr"
    root = zarr.open_group(str(root_path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for index in range(11):  # series 10 is the slide and OME Image 10: after 9, not after 1
        size = 24 if index == 10 else 4
        _ngff_image(root.create_group(str(index)), rng.integers(0, 255, (1, size, size), dtype=np.uint8), unit=None)
    root.create_group("OME")
    images = "".join(
        f'<Image ID="Image:{i}"><Pixels SizeC="1" SizeX="4" SizeY="4" SizeZ="1" SizeT="1" Type="uint8" '
        f'PhysicalSizeX="{0.65 if i == 10 else 9}" PhysicalSizeY="{0.65 if i == 10 else 9}">'
        f'<Channel ID="Channel:{i}:0" Name="{"CD20" if i == 10 else "label"}"/></Pixels></Image>' for i in range(11))
    (root_path / "OME" / "METADATA.ome.xml").write_text(
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">{images}</OME>')
    slide = open_slide(root_path)
    assert slide.metadata["bioformats2raw_series"] == "10" and slide.shape == (1, 24, 24)
    assert slide.channel_names == ("CD20",) and slide.pixel_size_um == pytest.approx(0.65)

import warnings

import pytest

from bananaline import catalog
from bananaline.errors import ErrorKind, GenerationError


def test_documented_pixel_sizes():
    pro = catalog.MODELS["gemini-3-pro-image-preview"]
    assert pro.expected_pixels("16:9", "1K") == (1376, 768)
    assert pro.expected_pixels("16:9", "2K") == (2752, 1536)
    assert pro.expected_pixels("16:9", "4K") == (5504, 3072)
    assert catalog.MODELS["gemini-2.5-flash-image"].expected_pixels("21:9", "1K") == (1536, 672)
    flash31 = catalog.MODELS["gemini-3.1-flash-image-preview"]
    assert flash31.expected_pixels("1:1", "512") == (512, 512)
    assert "8:1" in flash31.ratios and "8:1" not in pro.ratios


@pytest.mark.parametrize(
    "model, refs, maximum",
    [("gemini-2.5-flash-image", 4, 3), ("gemini-3-pro-image", 15, 14), ("gemini-3.1-flash-image", 15, 14)],
)
def test_too_many_references_refused(model, refs, maximum):
    catalog.validate(model, None, None, maximum)
    with pytest.raises(GenerationError) as info:
        catalog.validate(model, None, None, refs)
    assert info.value.kind is ErrorKind.INVALID_INPUT
    assert str(maximum) in info.value.message


def test_bad_ratio_and_size_list_valid_values():
    with pytest.raises(GenerationError) as info:
        catalog.validate("gemini-2.5-flash-image", "16:9", "4K", 0)
    assert "1K" in info.value.message and info.value.detail == "image_size"
    with pytest.raises(GenerationError) as info:
        catalog.validate("gemini-3-pro-image-preview", "8:1", None, 0)
    assert "21:9" in info.value.message and info.value.kind is ErrorKind.INVALID_INPUT


def test_size_normalisation_and_unknown_model_passthrough():
    assert catalog.normalize_size("4k") == "4K"
    assert catalog.normalize_size("2K") == "2K"
    assert catalog.normalize_size("512") == "512"
    assert catalog.validate("gemini-3-pro-image", "16:9", "4k", 0).image_size == "4K"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = catalog.validate("nano-banana-next", "7:3", "9K", 99)
    assert resolved.spec is None and resolved.warnings == ("unknown_model",)
    assert any(issubclass(w.category, catalog.UnknownModelWarning) for w in caught)

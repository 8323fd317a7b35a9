import warnings
from decimal import Decimal

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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one channel: the result says it, no Python warning
        resolved = catalog.validate("nano-banana-next", "7:3", "9K", 99)
    assert resolved.spec is None and resolved.warnings == ("unknown_model",)


def test_models_prefix_and_case_resolve_to_the_catalog_and_are_priced():
    for name in (
        "models/gemini-3-pro-image-preview",
        "Gemini-3-Pro-Image-Preview",
        " models/GEMINI-3-PRO-IMAGE-PREVIEW",
    ):
        resolved = catalog.validate(name, "16:9", "4k", 0)
        assert resolved.model == "gemini-3-pro-image-preview"
        assert resolved.spec is not None and resolved.price_usd == Decimal("0.24")


def test_unknown_models_are_never_free():
    family_member = catalog.validate("gemini-3-pro-image-2026-12", None, None, 0)
    assert family_member.spec is None and family_member.priced_exactly
    assert family_member.price_usd == Decimal("0.24")  # the dearest of its family
    stranger = catalog.validate("nano-banana-next", None, None, 0)
    assert not stranger.priced_exactly
    assert stranger.price_usd == max(p for s in catalog.MODELS.values() for p in s.price_usd.values())

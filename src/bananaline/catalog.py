"""The model catalog: what each Nano Banana model accepts and what it should deliver.

Data, not branches: every rule the library enforces before a network call, and every
expectation the output checks compare against, is read from :data:`MODELS`.

Sources: Google's Gemini API "Image generation" page (aspect-ratio / resolution tables,
reference-image limits) and the Gemini API pricing page, as of 2026-11. Relays such as
APIYI expose the same model names. The 3.1 Flash extreme ratios (1:4, 4:1, 1:8, 8:1) and
the 512 size follow the same 32-pixel grid and token budget as the documented ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from .errors import ErrorKind, GenerationError

SIZES_ORDER = ("512", "1K", "2K", "4K")

#: The ten ratios every model accepts.
BASE_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
#: 3.1 Flash adds the extreme banner ratios.
EXTRA_RATIOS = ("1:4", "4:1", "1:8", "8:1")

# 1K pixel sizes (width, height) as documented for Gemini 2.5 Flash Image.
_FLASH25_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

# 1K pixel sizes as documented for Gemini 3 Pro Image; 2K doubles, 4K quadruples.
_PRO3_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}

_FLASH31_EXTRA_1K: dict[str, tuple[int, int]] = {
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}

_SCALE = {"512": 0.5, "1K": 1, "2K": 2, "4K": 4}


def _scaled(
    table_1k: Mapping[str, tuple[int, int]], sizes: tuple[str, ...]
) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for ratio, (w, h) in table_1k.items():
        for size in sizes:
            factor = _SCALE[size]
            out[(ratio, size)] = (int(w * factor), int(h * factor))
    return out


@dataclass(frozen=True)
class ModelSpec:
    """One model's capabilities. ``pixels[(ratio, size)]`` is the documented output size."""

    name: str
    family: str
    ratios: tuple[str, ...]
    sizes: tuple[str, ...]
    max_references: int
    price_usd: Mapping[str, Decimal]
    pixels: Mapping[tuple[str, str], tuple[int, int]]
    aliases: tuple[str, ...] = field(default=())
    default_ratio: str = "1:1"
    default_size: str = "1K"
    source: str = "https://ai.google.dev/gemini-api/docs/image-generation"

    def expected_pixels(self, ratio: str, size: str) -> tuple[int, int] | None:
        return self.pixels.get((ratio, size))

    def price_for(self, size: str) -> Decimal:
        return self.price_usd.get(size, self.price_usd[self.default_size])


def _flash25(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="gemini-2.5-flash-image",
        ratios=BASE_RATIOS,
        sizes=("1K",),
        max_references=3,
        price_usd={"1K": Decimal("0.039")},
        pixels=_scaled(_FLASH25_1K, ("1K",)),
    )


def _pro3(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="gemini-3-pro-image",
        ratios=BASE_RATIOS,
        sizes=("1K", "2K", "4K"),
        max_references=14,
        price_usd={"1K": Decimal("0.134"), "2K": Decimal("0.134"), "4K": Decimal("0.24")},
        pixels=_scaled(_PRO3_1K, ("1K", "2K", "4K")),
    )


def _flash31(name: str) -> ModelSpec:
    sizes = ("512", "1K", "2K", "4K")
    return ModelSpec(
        name=name,
        family="gemini-3.1-flash-image",
        ratios=BASE_RATIOS + EXTRA_RATIOS,
        sizes=sizes,
        max_references=14,
        price_usd={
            "512": Decimal("0.045"),
            "1K": Decimal("0.067"),
            "2K": Decimal("0.101"),
            "4K": Decimal("0.151"),
        },
        pixels=_scaled({**_PRO3_1K, **_FLASH31_EXTRA_1K}, sizes),
    )


MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _flash25("gemini-2.5-flash-image"),
            _flash25("gemini-2.5-flash-image-preview"),
            _pro3("gemini-3-pro-image-preview"),
            _pro3("gemini-3-pro-image"),
            _flash31("gemini-3.1-flash-image-preview"),
            _flash31("gemini-3.1-flash-image"),
        )
    }
)

DEFAULT_MODEL = "gemini-3-pro-image-preview"


#: Families, most specific first: an unknown name that starts with one is priced as that family.
FAMILIES = tuple(sorted({spec.family for spec in MODELS.values()}, key=len, reverse=True))


def canonical_name(model: str) -> str:
    """The name as the catalog and the upstream URL want it: no ``models/`` prefix (google-genai
    sends one), no surrounding blanks, lower case for catalog names (model ids are lower case)."""
    name = model.strip()
    if name[:7].lower() == "models/":
        name = name[7:]
    lowered = name.lower()
    return lowered if lowered in MODELS else name


def family_of(model: str) -> str | None:
    lowered = canonical_name(model).lower()
    spec = MODELS.get(lowered)
    if spec is not None:
        return spec.family
    return next((family for family in FAMILIES if lowered.startswith(family)), None)


def dearest_usd(family: str | None = None) -> Decimal:
    """The most a single image can cost: in one family, or anywhere in the catalog."""
    return max(
        price
        for spec in MODELS.values()
        if family is None or spec.family == family
        for price in spec.price_usd.values()
    )


_SIZE_RE = re.compile(r"^\s*(512|[124])\s*[kK]?\s*$")


def normalize_size(size: str | None) -> str | None:
    """``4k`` -> ``4K``; ``512`` stays; ``None`` stays ``None`` (the model default applies)."""
    if size is None or str(size).strip() == "":
        return None
    text = str(size).strip()
    match = _SIZE_RE.match(text)
    if not match:
        return text.upper()
    token = match.group(1)
    return "512" if token == "512" else f"{token}K"


def normalize_ratio(ratio: str | None) -> str | None:
    if ratio is None or str(ratio).strip() == "":
        return None
    return str(ratio).strip().replace("：", ":").replace(" ", "")


def get_model(name: str) -> ModelSpec | None:
    return MODELS.get(canonical_name(name))


@dataclass(frozen=True)
class ResolvedParams:
    """What will actually be sent: the model, and the ratio/size after defaults."""

    model: str
    aspect_ratio: str | None
    image_size: str | None
    spec: ModelSpec | None
    warnings: tuple[str, ...] = ()

    @property
    def expected_pixels(self) -> tuple[int, int] | None:
        if self.spec is None or self.aspect_ratio is None:
            return None
        return self.spec.expected_pixels(self.aspect_ratio, self.image_size or self.spec.default_size)

    @property
    def price_usd(self) -> Decimal:
        """What one image is charged: the catalog price, or for a model outside the catalog the
        dearest price of its family (of the whole catalog when the family is unknown) — never 0."""
        if self.spec is None:
            return dearest_usd(family_of(self.model))
        return self.spec.price_for(self.image_size or self.spec.default_size)

    @property
    def priced_exactly(self) -> bool:
        """False when the price is a stand-in: the model's family is unknown to the catalog."""
        return self.spec is not None or family_of(self.model) is not None


def validate(
    model: str,
    aspect_ratio: str | None,
    image_size: str | None,
    reference_count: int,
) -> ResolvedParams:
    """Check a request against the catalog before anything is sent.

    Raises :class:`GenerationError` of kind ``invalid_input`` with the list of valid values.
    A model not in the catalog passes unvalidated: the result carries an ``unknown_model``
    warning (the one channel: relays add names weekly, so it is not an error).
    """
    ratio = normalize_ratio(aspect_ratio)
    size = normalize_size(image_size)
    model = canonical_name(model)
    spec = MODELS.get(model)
    if spec is None:
        return ResolvedParams(model, ratio, size, None, ("unknown_model",))
    if ratio is not None and ratio not in spec.ratios:
        raise GenerationError(
            ErrorKind.INVALID_INPUT,
            detail="aspect_ratio",
            message=f"aspect ratio {ratio!r} is not offered by {model}; valid: {', '.join(spec.ratios)}",
            request_sent=False,
            message_zh=f"{model} 不支持宽高比 {ratio!r}；可选：{'、'.join(spec.ratios)}",
        )
    if size is not None and size not in spec.sizes:
        raise GenerationError(
            ErrorKind.INVALID_INPUT,
            detail="image_size",
            message=f"image size {size!r} is not offered by {model}; valid: {', '.join(spec.sizes)}",
            request_sent=False,
            message_zh=f"{model} 不支持分辨率 {size!r}；可选：{'、'.join(spec.sizes)}",
        )
    if reference_count > spec.max_references:
        raise GenerationError(
            ErrorKind.INVALID_INPUT,
            detail="too_many_references",
            message=f"{model} accepts at most {spec.max_references} reference images, got {reference_count}",
            request_sent=False,
            message_zh=f"{model} 最多接受 {spec.max_references} 张参考图，实际 {reference_count} 张",
        )
    return ResolvedParams(model, ratio, size, spec)

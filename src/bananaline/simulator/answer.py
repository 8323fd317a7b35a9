"""The fake model: validate against the catalog, size the output, and turn a fault into an
:class:`~bananaline.simulator.outcome.Outcome`."""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass

from ..catalog import MODELS, ModelSpec
from .calls import BadRequest, ParsedCall
from .config import SimulatorConfig
from .faults import finish_reason, refusal_text
from .images import NOT_AN_IMAGE, ImageCache, Payload, Variant, palette_index, thought_size
from .outcome import Outcome

#: Unknown models (relays add names weekly) behave like a generic image model at 1K.
GENERIC_SPEC: ModelSpec = MODELS["gemini-3.1-flash-image"]


@dataclass(frozen=True)
class Sizing:
    spec: ModelSpec
    known_model: bool
    ratio: str
    size: str
    width: int
    height: int


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The catalog ratio closest to ``width:height`` on a log scale."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ratios, key=distance)


def size_output(call: ParsedCall) -> Sizing:
    """Validate ratio, size and reference count like Google does, and pick the pixel size."""
    spec = MODELS.get(call.model)
    known = spec is not None
    spec = spec or GENERIC_SPEC
    ratio, size = call.aspect_ratio, call.image_size
    if ratio is not None and ratio not in spec.ratios:
        raise BadRequest(f"Unsupported aspect ratio {ratio!r}. Supported values: {', '.join(spec.ratios)}.")
    if size is not None and known and size not in spec.sizes:
        raise BadRequest(f"Unsupported image size {size!r}. Supported values: {', '.join(spec.sizes)}.")
    if len(call.references) > spec.max_references:
        raise BadRequest(
            f"Too many input images: {len(call.references)}; at most {spec.max_references} are supported."
        )
    if ratio is None:
        first = next((ref.pixels for ref in call.references if ref.pixels), None)
        ratio = nearest_ratio(*first, spec.ratios) if first else "1:1"
    size = (size or spec.default_size) if known else "1K"
    width, height = spec.pixels[(ratio, size)]
    return Sizing(spec, known, ratio, size, width, height)


def _is_thinking(model: str) -> bool:
    return "gemini-3" in model


def _image_tokens(sizing: Sizing) -> int:
    if sizing.spec.family.startswith("gemini-2.5"):
        return 1290
    return 2000 if sizing.size == "4K" else 1120


def _signature(prompt: str) -> str:
    digest = hashlib.sha512(prompt.encode("utf-8")).digest()
    return base64.b64encode(b"\x12\x0a" + digest + digest[::-1]).decode("ascii")


async def build_outcome(
    call: ParsedCall,
    sizing: Sizing,
    fault: str | None,
    config: SimulatorConfig,
    images: ImageCache,
    response_id: str,
) -> Outcome:
    """What the model answers to ``call`` under ``fault`` (None: a good image)."""
    thinking = _is_thinking(call.model)
    palette = palette_index(call.prompt, config.palette_size)
    outcome = Outcome(
        model=call.model,
        response_id=response_id,
        prompt_text_tokens=max(1, len(call.prompt.encode("utf-8")) // 4),
        prompt_image_tokens=len(call.references) * (560 if thinking else 258),
        thoughts_tokens=(150 + 37 * palette) if thinking else 0,
    )
    if thinking:
        outcome.thought_text = (
            "**Planning the composition**\n\nI'm working out the layout, the palette and the "
            "lighting the request asks for before rendering the final image."
        )

    if fault == "prompt_blocked":
        outcome.block_reason = "SAFETY"
        outcome.thoughts_tokens = 0
        return outcome
    if fault == "no_candidates":
        outcome.has_candidates = False
        return outcome
    reason = finish_reason(fault or "")
    if reason is not None:
        outcome.finish_reason = reason
        return outcome
    if fault == "no_parts":
        outcome.empty_parts = True
        return outcome
    if fault == "zero_candidates_token":
        outcome.thought_text = None
        outcome.thoughts_tokens = 0
        outcome.explicit_zero_output = True
        outcome.text = "I'm not able to help with that."
        return outcome
    refusal = refusal_text(fault or "")
    if refusal is not None or not call.wants_image:
        outcome.text = refusal or "Here is a description of the image you asked for."
        outcome.candidates_tokens = max(1, len(outcome.text.encode("utf-8")) // 4)
        return outcome

    outcome.text = "Here is your image."
    outcome.candidates_tokens = _image_tokens(sizing)
    outcome.thought_signature = _signature(call.prompt) if thinking else None
    fmt = config.image_format
    width, height, variant = sizing.width, sizing.height, "normal"
    if fault == "inline_data_empty":
        outcome.image = Payload(b"", b"", "image/png", 0, 0)
        return outcome
    if fault == "invalid_image":
        outcome.image = Payload.of(NOT_AN_IMAGE, "image/png")
        return outcome
    if fault == "jpeg_as_png":
        fmt = "jpeg"
        outcome.declared_mime = "image/png"
    elif fault == "wrong_size":
        if sizing.size != "1K":
            width, height = sizing.spec.pixels[(sizing.ratio, "1K")]
        else:
            width, height = GENERIC_SPEC.pixels[(sizing.ratio, "512")]
    elif fault == "wrong_aspect":
        other = "1:1" if sizing.ratio != "1:1" else "16:9"
        width, height = sizing.spec.pixels[(other, sizing.size)]
    elif fault == "black_image":
        variant = "black"
    chosen: Variant = variant  # type: ignore[assignment]
    outcome.image = await images.aget(fmt, width, height, palette, chosen, config.realistic)
    if thinking:
        tw, th = thought_size(width, height)
        outcome.thought_image = await images.aget(fmt, tw, th, palette, "normal", config.realistic)
    return outcome

"""Loader for the embedded procedural phantom (``format: phantom``); needs no files, ``root`` is unused.

The card's ``phantom:`` section holds :func:`anomaly_bench.data.phantom.generate_phantom` arguments
(``n_subjects``, ``slices_per_subject``, ``size``, ``diseased_fraction``, ``seed``, ``lesion_types``);
missing keys take the generator defaults. The phantom is rendered at the card's ``image_size`` (which
``load_dataset`` always sets, also from ``--image-size``), natively rather than resized; ``phantom.size``
is only for cards without ``image_size`` and must agree with it otherwise.
"""

from __future__ import annotations

from typing import Any

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.phantom import DEFAULTS, generate_phantom
from anomaly_bench.data.records import ImageDataset


def phantom_params(card: dict[str, Any]) -> dict[str, Any]:
    """Generator arguments from a card: defaults ← ``image_size`` (as ``size``) ← the ``phantom:`` section."""
    where = f"dataset card '{card.get('name', 'phantom')}'"
    section = card.get("phantom") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'phantom' must be a mapping of generator parameters, "
                          f"got {type(section).__name__}")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown phantom parameter(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **section}
    size = card.get("image_size")
    if size is not None:
        if "size" in section and section["size"] != size:
            raise ConfigError(f"{where}: phantom.size={section['size']} conflicts with image_size={size}; "
                              f"drop phantom.size (the phantom is rendered at image_size)")
        params["size"] = size
    params["lesion_types"] = tuple(params["lesion_types"]) if isinstance(params["lesion_types"], (list, tuple)) \
        else params["lesion_types"]
    return params


@register_format("phantom")
def load_phantom(card: dict[str, Any], root=None) -> ImageDataset:
    """Generate the phantom described by ``card`` (deterministic: same card, same pixels)."""
    ds = generate_phantom(**phantom_params(card))
    ds.name = str(card.get("name") or "phantom")
    return ds


load_phantom.card_keys = ("phantom",)  # the card section read above (checked by the card validator)

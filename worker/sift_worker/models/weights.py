"""Loading user-supplied safetensors checkpoints, with errors a user can act on.

Every problem surfaces as `WeightsError` naming the file and the architecture; torch's own
`load_state_dict` messages (a wall of key names) never reach the user.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable, Mapping

import torch

from .base import EmbeddingModel

_SHOW = 5  # how many offending keys an error message lists
# Some exporters drop BatchNorm's step counter; it does not affect inference.
_OPTIONAL_SUFFIX = ".num_batches_tracked"
_RESNET_DEPTHS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_VIT_WIDTHS = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large"}


class WeightsError(ValueError):
    """A weights file cannot be used for the requested architecture."""


def load_weights(model: EmbeddingModel, path: pathlib.Path) -> None:
    """Copy the tensors of a `.safetensors` file into `model`, checking names and shapes first.

    Keys under the model's `ignored_prefixes` (classifier heads) are skipped, a leading
    `module.` (DataParallel) is stripped, and tensors are cast to the model's dtypes, so
    fp16/bf16 exports load too. The model is left unchanged when any check fails.
    """
    path = pathlib.Path(path)
    where = f"{model.name}: weights file {path}"
    state = _read_safetensors(path, where)
    if not state:
        raise WeightsError(f"{where} contains no tensors")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    state = {
        key: value
        for key, value in state.items()
        if not any(key.startswith(prefix) for prefix in model.ignored_prefixes)
    }

    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = sorted((k for k in state if k not in expected), key=_natural_order)
    mismatched = [
        f"{k!r}: model expects {_shape(expected[k])}, file has {_shape(state[k])}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the file: {_first(unexpected)}")
    if mismatched:
        shown = "; ".join(mismatched[:_SHOW])
        problems.append(f"{len(mismatched)} shape mismatch(es): {shown}{_more(mismatched)}")
    if problems:
        guess = guess_architecture(state)
        if guess is not None and guess != model.name:
            from .registry import ARCHITECTURES  # registry imports this module

            fix = (
                f"choose the '{guess}' architecture"
                if guess in ARCHITECTURES
                else f"{guess} is not a built-in architecture"
            )
            head = (
                f"{where} looks like {guess} weights, not {model.name}: "
                f"{fix} or supply a {model.name} checkpoint"
            )
        else:
            head = f"{where} does not match the {model.name} architecture"
        raise WeightsError(head + "\n  - " + "\n  - ".join(problems))

    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{where}: tensor {key!r} contains NaN or infinite values")

    with torch.no_grad():
        for key, value in state.items():
            expected[key].copy_(value)


def guess_architecture(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the architecture a checkpoint was made for, from its key layout, if recognisable."""
    if "blocks.0.attn.qkv.weight" in state and "pos_embed" in state:
        return _VIT_WIDTHS.get(int(state["pos_embed"].shape[-1]))
    if "layer1.0.conv1.weight" in state:
        depths = tuple(_count_blocks(state, f"layer{i}.") for i in range(1, 5))
        return _RESNET_DEPTHS.get(("layer1.0.conv3.weight" in state, depths))
    if "features.0.conv.weight" in state:
        return "tiny"
    return None


def _read_safetensors(path: pathlib.Path, where: str) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(f"{where} does not exist")
    if not path.is_file():
        raise WeightsError(f"{where} is not a regular file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state: dict[str, torch.Tensor] = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        hint = ""
        with path.open("rb") as fh:
            magic = fh.read(2)
        if magic == b"PK" or magic[:1] == b"\x80":
            hint = (
                "; it looks like a PyTorch pickle checkpoint (.pt/.pth): convert it with "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                "'out.safetensors')"
            )
        raise WeightsError(f"{where} is not a valid safetensors file ({exc}){hint}") from None
    return state


def _count_blocks(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _natural_order(key: str) -> tuple[bool, list[int | str]]:
    """layer2 before layer10, and BatchNorm step counters (noise in a message) last."""
    parts: list[int | str] = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]
    return key.endswith(_OPTIONAL_SUFFIX), parts


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _first(items: list[str]) -> str:
    return ", ".join(repr(item) for item in items[:_SHOW]) + _more(items)


def _more(items: list[str]) -> str:
    return f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else ""

"""The random number generators a training run draws from, as one state-dict object for the resume checkpoint."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

__all__ = ["TrainingRNGState"]


def _numpy_state(rs: tuple) -> dict[str, Any]:
    # ('MT19937', keys uint32[624], pos, has_gauss, cached_gaussian) as types torch.load(weights_only=True) reads
    name, keys, pos, has_gauss, cached = rs
    if name != "MT19937":
        raise ValueError(f"unsupported numpy bit generator {name!r}.")
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _random_transforms(transform: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every object with a private ``numpy.random.RandomState`` ``R`` (MONAI ``Randomizable``) in a transform
    tree, depth first in list order: ``Compose`` and its subclasses nest through ``transforms``, and a dictionary
    transform's inner array transform (e.g. ``RandGaussianNoised``'s ``RandGaussianNoise``, which draws from its own
    ``R``) is found among its attributes, in the order they were set."""
    if transform is None:
        return
    seen = set() if seen is None else seen
    if id(transform) in seen:
        return
    seen.add(id(transform))
    if isinstance(getattr(transform, "R", None), np.random.RandomState):
        yield transform
    children = getattr(transform, "transforms", None)
    if isinstance(children, (list, tuple)):
        for child in children:
            yield from _random_transforms(child, seen)
    for value in getattr(transform, "__dict__", {}).values():
        if isinstance(getattr(value, "R", None), np.random.RandomState) or isinstance(
            getattr(value, "transforms", None), (list, tuple)
        ):
            yield from _random_transforms(value, seen)


class TrainingRNGState:
    """State dict of every random number generator a training epoch draws from, so a resumed run continues with
    exactly the draws the uninterrupted run would have made.

    Covered: the global torch (CPU and, when initialised, CUDA), numpy and Python generators (network sampling,
    dropout, the shuffling seed a ``DataLoader`` draws per epoch, the base seed of its workers), the private
    ``RandomState`` of every random transform of the training dataset and of the array transforms inside them
    (flips, rotations, noise, :class:`~monai_probunet.data.RandGraderd`'s grader draws) and an explicit
    ``generator`` of the loader or its sampler. The objects are looked up on the engine's data loader when the
    state is read or written.

    Args:
        engine: the trainer (a MONAI workflow with ``data_loader``, or an ignite engine that is running).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _loader(self) -> Any:
        return getattr(self.engine, "data_loader", None) or getattr(self.engine.state, "dataloader", None)

    def _transforms(self) -> list[Any]:
        dataset = getattr(self._loader(), "dataset", None)
        return list(_random_transforms(getattr(dataset, "transform", None)))

    def _generators(self) -> list[torch.Generator]:
        loader = self._loader()
        found: list[torch.Generator] = []
        for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not f for f in found):
                found.append(g)
        return found

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": {
                "version": version,
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
            "transforms": [_numpy_state(t.R.get_state()) for t in self._transforms()],
            "generators": [g.get_state() for g in self._generators()],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        transforms, generators = self._transforms(), self._generators()
        if len(state["transforms"]) != len(transforms) or len(state["generators"]) != len(generators):
            raise ValueError(
                f"the checkpoint holds the states of {len(state['transforms'])} random transforms and "
                f"{len(state['generators'])} loader generators, this training has {len(transforms)} and "
                f"{len(generators)}: resume with the augmentation of the run that wrote it."
            )
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
        for t, s in zip(transforms, state["transforms"]):
            t.R.set_state(_numpy_tuple(s))
        for g, s in zip(generators, state["generators"]):
            g.set_state(s)
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

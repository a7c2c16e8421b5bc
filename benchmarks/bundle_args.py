"""What the model benchmarks share: the ``--model`` / ``--config`` / ``--samples`` / ``--seed`` options and the bundle's
dataset as ``train.yaml`` (or the given config) defines it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` (default: the shipped ``bundle/models/model.pt``), ``--config`` (``train.yaml``, or it and the
    overrides the model was trained with), ``--samples`` (16 hypotheses per image) and ``--seed`` (0)."""
    parser.add_argument("--model", default=str(REPO / "bundle" / "models" / "model.pt"))
    parser.add_argument("--config", nargs="+", default=[str(REPO / "bundle" / "configs" / "train.yaml")])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def bundle_data(config_path: str | Sequence[str]) -> tuple[Any, Any]:
    """``(datalist, transform)``: the config's dataset (generated on first use) and its validation preprocessing."""
    config = ConfigParser()
    config.read_config(config_path)
    config["bundle_root"] = str(REPO / "bundle")
    return config.get_parsed_content("datalist"), config.get_parsed_content("validate#preprocessing")

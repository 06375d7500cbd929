"""Literal aliases for the option strings of the public API (floor L0)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Metric = Literal["sad", "mad", "l1_similarity", "ssd", "ssd_normed", "ccorr", "ncc", "ccoeff", "zncc"]
Mode = Literal["valid", "same", "full"]
Padding = Literal["constant", "reflect", "replicate", "circular"]
ChannelsMode = Literal["joint", "separate", "mean"]
Method = Literal["auto", "reference", "direct"]

ArrayLike = np.ndarray | torch.Tensor
IntPair = int | tuple[int, int]

MODES: tuple[str, ...] = ("valid", "same", "full")
PADDINGS: tuple[str, ...] = ("constant", "reflect", "replicate", "circular")
CHANNELS_MODES: tuple[str, ...] = ("joint", "separate", "mean")

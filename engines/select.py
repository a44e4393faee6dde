"""--engine auto|torch|...: which backend runs here, and why (for the log, /readyz and X-Engine)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engines.base import EngineUnavailable, ImageEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRequest:
    engine: str  # auto | torch | onnxruntime | openvino | tensorrt
    model: str
    engine_dir: Path
    device: str = "auto"
    precision: str = "auto"
    presets_dir: Path | None = None


def _torch(request: EngineRequest, reason: str) -> ImageEngine:
    from engines.torch_backend import TorchEngine

    return TorchEngine(
        request.model, request.device, request.precision, request.presets_dir, selection_reason=reason
    )


def select_engine(request: EngineRequest) -> ImageEngine:
    """Build (not load) the engine asked for; raises EngineUnavailable with the reason it cannot run."""
    if request.engine == "torch":
        engine = _torch(request, "asked for with --engine torch")
    elif request.engine == "auto":
        engine = _torch(request, "auto: no compiled engine can run here, so the PyTorch path")
    else:
        raise EngineUnavailable(f"--engine {request.engine} is not available in this build")
    logger.info("engine: %s (%s)", engine.info.name, engine.info.selection_reason)
    return engine

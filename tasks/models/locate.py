"""Where the configured model lives: OCR_MODEL resolved in OCR_MODEL_DIR, offline.

OCR_MODEL is a folder name in OCR_MODEL_DIR (`Qwen2-VL-2B-Instruct-4bit`), a hub repo
id (`mlx-community/Qwen2-VL-2B-Instruct-4bit`: the snapshot `refs/main` points to in the
hub cache layout), or a repo id at a revision (`org/name@<branch, tag or commit>`).
Nothing is ever downloaded. Used by the engine choice (any process), the mlx-vlm engine
and the loaded-model registrations (pool children) and the audit (pool child).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import split_model

if TYPE_CHECKING:
    from tasks.settings import Settings


def configured_model(settings: Settings) -> Path | None:
    """The configured VLM folder, or None when OCR_MODEL is unset or not present."""
    return locate(settings.model_dir, settings.model) if settings.model else None


def loadable_model(settings: Settings) -> Path | None:
    """The configured VLM folder when it holds a model (its config.json), else None."""
    path = configured_model(settings)
    return path if path is not None and (path / "config.json").is_file() else None


def model_missing(settings: Settings) -> str:
    """Why `loadable_model` found no model: what was searched; never a download."""
    return (f"model {settings.model!r} is not in OCR_MODEL_DIR (searched "
            f"{searched(settings.model_dir, settings.model)}; no config.json there); "
            "models are never downloaded")


def locate(model_dir: Path, model: str) -> Path | None:
    """The folder to load for `model`, or None when the directory does not have it.

    A folder name: `<model_dir>/<model>` (links resolved), when it exists. A repo id: the
    snapshot folder its ref (default `main`) or commit names in the hub cache.
    """
    name, revision = split_model(model)
    if "/" not in name:
        path = (model_dir / model).resolve()
        return path if path.exists() else None
    from tasks.models import _hub_cache as hub_cache  # huggingface_hub only where a repo id is used

    return hub_cache.resolve(model_dir.resolve(), name, revision)


def searched(model_dir: Path, model: str) -> str:
    """The path `locate` looked at, for error messages."""
    name, revision = split_model(model)
    if "/" not in name:
        return str(model_dir / model)
    from tasks.models import _hub_cache as hub_cache

    where = model_dir / hub_cache.folder_for(name)
    return f"{where} ({'refs/main' if revision is None else revision})"


def served_model(settings: Settings) -> str:
    """The `model` of each request: OCR_VLM_API_MODEL, else what the server was given.

    mlx_vlm.server names the model it preloaded by its `--model` argument, and loads
    (or, offline, fails to load) any other name it is asked for; so with the local
    `vlm-server` the name is the resolved folder `server_plan` passes, else OCR_MODEL.
    """
    if settings.vlm_api_model:
        return settings.vlm_api_model
    if starts_local_server(settings) and settings.model:
        path = configured_model(settings)
        if path is not None:
            return str(path)
    return settings.model


def starts_local_server(settings: Settings) -> bool:
    """Whether the Procfile's `vlm-server` serves this host's vlm-api workers."""
    return settings.engine == "vlm-api" and not settings.vlm_api_url

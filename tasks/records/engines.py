"""Which engines exist: the one table of built-in engine names (the engine registry).

Pure data on the ground floor, imported by every process (clients too, which must not
import `tasks.engines`): the settings validate OCR_ENGINE, OCR_LANG_ENGINES
and OCR_VLM_FALLBACK against it, `tasks.engines.engine_class` finds an adapter in it,
and the clients (submit.py, the HTTP API) refuse a job naming an engine that is not in
it (nor a plugin's, nor one a live worker serves) before anything is stored. Nothing
here imports an engine library.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"  # OCR_ENGINE only: mlx-vlm when its model is present, else tesseract


@dataclass(frozen=True)
class EngineSpec:
    """A built-in engine: its adapter class and how its packages are installed."""

    name: str
    adapter: str                # "module:Class" of its OcrEngine
    make_target: str | None     # `make <target>` installs its packages; None: requirements.txt
    vlm: bool = False           # reads pages with a vision-language model


ENGINES: dict[str, EngineSpec] = {spec.name: spec for spec in (
    EngineSpec("tesseract", "tasks.engines.tesseract:TesseractEngine", None),
    EngineSpec("mlx-vlm", "tasks.engines.vlm.mlx_vlm_engine:MlxVlmEngine", "vlm", vlm=True),
    EngineSpec("vlm-api", "tasks.engines.vlm.vlm_api_engine:VlmApiEngine", "vlm-api", vlm=True),
    EngineSpec("rapidocr", "tasks.engines.rapidocr:RapidOcrEngine", "rapidocr"),
)}
VLM_ENGINES = tuple(name for name, spec in ENGINES.items() if spec.vlm)


def engine_names(plugins: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Every engine a job may name: the built-ins, then OCR_ENGINE_PLUGINS' names."""
    return (*ENGINES, *(p for p in plugins if p not in ENGINES))


def install_hint(name: str) -> str:
    """How a worker gets engine `name`: its `make` target, and the setting that runs it."""
    spec = ENGINES.get(name)
    if spec is None:
        return f"a worker with OCR_ENGINE_PLUGINS naming {name} and OCR_ENGINE={name}"
    packages = (f"`make {spec.make_target}` installs its packages" if spec.make_target
                else "its packages come with requirements.txt")
    return f"a worker with OCR_ENGINE={name} ({packages})"

"""The engine registry and its release in a pool child (in process), tesseract's empty page."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from tasks.engines.release import RELEASE_SIGNAL, ChildKeeper, signal_children
from tasks.engines.resident import ResidentEngines
from tasks.errors import EngineUnavailable
from tasks.settings import Settings
from tests.harness import eventually


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def _model_settings(tmp_path: Path) -> Settings:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return settings(OCR_ENGINE="fake-model", OCR_MODEL_DIR=str(tmp_path), OCR_MODEL="m",
                    OCR_ENGINE_PLUGINS="fake-model=tests.fake_engines:FakeModelEngine")


def test_registry_reports_model_entries_around_loads(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, str], list[str]]] = []
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model",
                              on_load=lambda r: seen.append((r.model_entries(),
                                                             list(r.engines))))
    registry.get()
    # registered while loading (before the engine exists), and after
    assert seen == [({"fake-model": "m"}, []), ({"fake-model": "m"}, ["fake-model"])]
    assert registry.take_used_models() == {"m"} and registry.take_used_models() == set()
    assert registry.unload() == ["fake-model"] and registry.model_entries() == {}


def test_failed_load_is_deregistered(tmp_path: Path) -> None:
    s = settings(OCR_ENGINE="fake-model", OCR_MODEL_DIR=str(tmp_path), OCR_MODEL="gone",
                 OCR_ENGINE_PLUGINS="fake-model=tests.fake_engines:FakeModelEngine")
    seen: list[dict[str, str]] = []
    registry = ResidentEngines(settings=s, primary="fake-model",
                              on_load=lambda r: seen.append(r.model_entries()))
    with pytest.raises(EngineUnavailable):
        registry.get()
    assert seen == [{"fake-model": "gone"}, {}]


def test_release_waits_for_the_running_task(tmp_path: Path) -> None:
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model")
    keeper = ChildKeeper(None, tmp_path, idle_seconds=0, heartbeat_seconds=30)
    keeper._engines = registry
    keeper.task_finished()  # serving, idle
    registry.get()
    keeper.task_started()
    keeper._on_signal(RELEASE_SIGNAL, None)  # remote control during a task: deferred
    assert registry.engines
    keeper.task_finished()
    assert not registry.engines
    registry.get()
    keeper.task_started()
    keeper._idle_asked = True
    keeper._on_signal(RELEASE_SIGNAL, None)  # idle request during a task: not idle
    keeper.task_finished()
    assert registry.engines


def test_release_signal_reaches_the_handler(tmp_path: Path) -> None:
    registry = ResidentEngines(settings=_model_settings(tmp_path), primary="fake-model")
    keeper = ChildKeeper(None, tmp_path, idle_seconds=0, heartbeat_seconds=30)
    previous = signal.getsignal(RELEASE_SIGNAL)
    try:
        keeper.install()
        keeper._engines = registry
        keeper.task_finished()
        registry.get()
        signal_children([os.getpid()])
        # the handler runs in this (main) thread at the next bytecode
        eventually(lambda: not registry.engines, 10, "the release signal's handler",
                   interval=0.01)
    finally:
        signal.signal(RELEASE_SIGNAL, previous)


def test_tesseract_words_of_a_page_without_text() -> None:
    """Word boxes asked of an empty page (pdf, json, hOCR, ALTO outputs): none, no error."""
    from tasks.engines import RecognizeOptions
    from tasks.engines.tesseract import TesseractEngine

    engine = TesseractEngine.load(Settings.from_env({}))
    try:
        result = engine.recognize(Image.new("L", (200, 120), 235),
                                  RecognizeOptions(want_words=True))
    finally:
        engine.close()
    assert result.words == () and result.text.strip() == ""

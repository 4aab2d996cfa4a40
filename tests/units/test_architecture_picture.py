"""docs/architecture.svg is what the tree draws: every module on its floor, the job's path real.

`scripts/draw_architecture.py` draws it from pyproject.toml's layers contract, the
modules of the tree, and the job's path (`PATH`): each hop a function its module
defines. The picture must be the script's output byte for byte, and every module of
`tasks/`, `scripts/` and the checkout's top must be on a floor of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scripts.draw_architecture import PATH, SVG, draw, floors, missing_hops
from tests.harness import ROOT
from tests.units.test_architecture_doc import modules

REDRAW = "run `.venv/bin/python -m scripts.draw_architecture` and commit docs/architecture.svg"


def test_the_picture_is_what_the_tree_draws() -> None:
    assert draw(ROOT) == (ROOT / SVG).read_text(), \
        f"docs/architecture.svg is not the picture of this tree: {REDRAW}"


def test_every_module_is_on_a_floor() -> None:
    drawn = {module for floor in floors(ROOT) for module in floor.modules}
    missing = [module for module in modules(ROOT) if module not in drawn]
    assert not missing, (f"on no floor of pyproject.toml's layers contract, so not in the "
                         f"picture: {missing}; add it (or its package) to a floor, then {REDRAW}")


def test_every_hop_of_the_path_is_a_function_of_the_code() -> None:
    missing = missing_hops(ROOT)
    assert not missing, (f"the job's path in scripts/draw_architecture.py names what the "
                         f"code does not define: {missing}; name the function the job "
                         f"passes now, then {REDRAW}")


def copy_of_the_tree(into: Path) -> Path:
    """pyproject.toml, the modules of the job's path, and the top's command lines."""
    for name in ("pyproject.toml", "submit.py", "ocr_admin.py", "worker_config.py",
                 *(hop.module for hop in PATH)):
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, into / name)
    return into


def test_a_new_module_or_a_hop_gone_changes_the_picture(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    before = draw(tree)
    (tree / "tasks" / "queue" / "a_new_concept.py").write_text("")
    after = draw(tree)
    assert "a_new_concept" not in before and ">a_new_concept</text>" in after
    (tree / "tasks" / "lonely.py").write_text("")  # in no layer: the test above names it
    assert [m for m in modules(tree) if m not in {
        module for floor in floors(tree) for module in floor.modules}] == ["tasks/lonely.py"]

    (tree / "tasks" / "lifecycle" / "job_exit.py").write_text(
        "class JobEnder:\n    def end(self) -> None: ...\n")
    (tree / "tasks" / "admission.py").unlink()
    assert missing_hops(tree) == ["tasks/admission.py:admit",
                                  "tasks/lifecycle/job_exit.py:JobEnder.finish"]

"""The prompt probe in a real browser: JupyterLab on a loopback port, Debian's chromium, playwright.

Opens notebooks/05_prompt_probe.ipynb, runs it, then uses the probe as a learner would: a
left click on an object, a right click (negative point, no context menu), keys typed inside
the widget (they must not reach JupyterLab), export then import, a class name as the prompt. Saves a screenshot and the
browser's click timings to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tools.labbrowser import (CHROMIUM_ARGS, LabError, act, image_to_page, jupyterlab, require_chromium,
                              run_notebook)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_prompt_probe.ipynb"
ARTIFACTS = REPO / "test-artifacts"
STEP_TIMEOUT_MS = 20_000
CLICKS_TIMED = 12


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port serving a copy of the probe notebook; (url, token)."""
    try:
        require_chromium()
    except LabError as error:
        pytest.fail(str(error), pytrace=False)
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    with jupyterlab(root, {"SAMKIT_PROFILE": "smoke", "SAMKIT_CACHE": str(root / "samkit-cache")}) as served:
        yield served


def _scores(probe) -> list[str]:
    return [text.strip() for text in probe.locator(".sp-cards .sp-card .sp-score").all_inner_texts()]


def _canvas_pixels(page, canvas) -> np.ndarray:
    data = page.evaluate("""(canvas) => {
        const context = canvas.getContext("2d");
        return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
    }""", canvas.element_handle())
    return np.asarray(data, dtype=np.uint8).reshape(-1, 4)


def _cell_count(page) -> tuple[int, int]:
    """Cells in the notebook's model and in the page."""
    return (page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.cells.length"),
            page.locator(".jp-Notebook .jp-Cell").count())


def test_probe_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    from samkit import prompts
    from samkit.datasets import ShapeScenes

    url, token = lab
    # The scene the notebook's first probe shows (SAMKIT_SEED defaults to 0).
    scene = ShapeScenes("test", "base", n=8, seed=0)[1]
    target_xy = prompts.center_point(scene.instance_masks[0])[0]
    others = scene.instance_masks[1:].any(axis=0) if len(scene.instance_masks) > 1 else ~scene.instance_masks[0]
    negative_xy = prompts.center_point(others)[0]
    ARTIFACTS.mkdir(exist_ok=True)
    timings = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(require_chromium()), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        console = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        try:
            run_notebook(page, url, token, NOTEBOOK.name)
            probe = page.locator(".samkit-probe").first
            canvas = probe.locator("canvas.sp-canvas")
            page.wait_for_function("(c) => c.dataset.imageWidth === '256'", arg=canvas.element_handle(),
                                   timeout=STEP_TIMEOUT_MS)

            # Start from no prompts (the notebook left some).
            act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
            assert probe.get_attribute("data-points") == "0" and _scores(probe) == []
            empty = _canvas_pixels(page, canvas)

            # 1. A left click on the object: masks and scores appear.
            act(page, probe, lambda: page.mouse.click(*image_to_page(canvas, *target_xy)))
            timings["left_click_ms"] = float(probe.get_attribute("data-total-ms"))
            assert probe.get_attribute("data-points") == "1"
            first_scores = _scores(probe)
            assert len(first_scores) == 4 and all(0.0 <= float(s) <= 1.5 for s in first_scores), first_scores
            assert probe.locator(".sp-cards .sp-card .sp-gt").count() == 4  # true IoU and Dice per candidate
            assert probe.locator(".sp-cards .sp-card .sp-name", has_text="★").count() == 1  # SAM's pick
            changed = np.abs(_canvas_pixels(page, canvas).astype(int) - empty).sum(axis=1) > 30
            assert changed.sum() > 200, "no mask was drawn on the canvas"
            assert "decode" in probe.locator(".sp-timing").inner_text()

            # 2. A right click: a negative point, new scores, and no context menu.
            page.evaluate("""() => {
                window.__contextMenus = [];
                window.addEventListener("contextmenu", (event) => {
                    setTimeout(() => window.__contextMenus.push(event.defaultPrevented), 0);
                }, true);
            }""")
            negative = image_to_page(canvas, *negative_xy)
            act(page, probe, lambda: page.mouse.click(*negative, button="right"))
            timings["right_click_ms"] = float(probe.get_attribute("data-total-ms"))
            assert probe.get_attribute("data-points") == "2"
            second_scores = _scores(probe)
            assert len(second_scores) == 4 and second_scores != first_scores
            assert page.evaluate("() => window.__contextMenus") == [True], "the context menu was not suppressed"
            assert page.locator(".lm-Menu").count() == 0, "JupyterLab opened its context menu"
            box = canvas.bounding_box()
            red = page.evaluate("""([canvas, x, y]) => {
                const ratio = canvas.width / canvas.getBoundingClientRect().width;
                return Array.from(canvas.getContext("2d").getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data);
            }""", [canvas.element_handle(), negative[0] - box["x"], negative[1] - box["y"] - 4])
            assert red[0] > 150 and red[1] < 100, f"the negative point is not drawn red: {red}"

            # 3. Keys typed inside the widget stay there: no cell inserted or deleted.
            cells_before = _cell_count(page)
            probe.focus()
            for key in ["a", "b", "d", "d", "Escape", "a"]:
                page.keyboard.press(key)
            act(page, probe, lambda: page.keyboard.press("z"))  # the widget's own undo
            assert probe.get_attribute("data-points") == "1"
            act(page, probe, lambda: page.keyboard.press("y"))  # and redo
            assert probe.get_attribute("data-points") == "2" and _scores(probe) == second_scores
            time.sleep(0.5)  # let any stray JupyterLab command land before counting
            assert _cell_count(page) == cells_before, "a key typed in the widget changed the notebook's cells"

            # 4. Export, clear, import: the same view comes back.
            probe.get_by_role("button", name="Export").click()
            exported = probe.locator("textarea.sp-text").input_value()
            assert json.loads(exported)["labels"] == [1, 0]
            act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
            assert probe.get_attribute("data-points") == "0" and _scores(probe) == []
            probe.get_by_role("button", name="Import").click()
            probe.locator("textarea.sp-text").fill(exported)
            act(page, probe, lambda: probe.get_by_role("button", name="Load these prompts").click())
            assert probe.get_attribute("data-points") == "2" and _scores(probe) == second_scores
            assert not probe.locator(".sp-message.sp-error").count()
            probe.get_by_role("button", name="Close").click()

            # 5. A drag draws a box; a click on a point removes it.
            x0, y0, x1, y1 = prompts.tight_box(scene.instance_masks[0])
            start, end = image_to_page(canvas, x0, y0), image_to_page(canvas, x1, y1)

            def drag() -> None:
                page.mouse.move(*start)
                page.mouse.down()
                page.mouse.move(*end, steps=8)
                page.mouse.up()

            act(page, probe, drag)
            assert probe.get_attribute("data-has-box") == "true" and probe.get_attribute("data-points") == "2"
            act(page, probe, lambda: page.mouse.click(*image_to_page(canvas, *negative_xy)))
            assert probe.get_attribute("data-points") == "1" and "removed" in probe.locator(".sp-message").inner_text()

            # 6. A class name typed in the widget is a prompt (the notebook gave the probe the text-conditioned TinySAM).
            name = scene.class_names[0]
            probe.locator("input.sp-name-input").fill(name)
            before_name = _canvas_pixels(page, canvas)
            act(page, probe, lambda: probe.locator("input.sp-name-input").press("Enter"))
            assert int(probe.get_attribute("data-name-area")) > 100, probe.locator(".sp-message").inner_text()
            assert name in probe.locator(".sp-name-info").inner_text()
            assert probe.get_attribute("data-points") == "1"  # typing in the box is not a shortcut key
            orange = np.abs(_canvas_pixels(page, canvas).astype(int) - before_name).sum(axis=1) > 30
            assert orange.sum() > 100, "the name's mask was not drawn"
            act(page, probe, lambda: probe.get_by_role("button", name="Remove name").click())
            assert probe.get_attribute("data-name-area") == ""

            # 7. Click latency, click event to masks painted, with the jitter off (it adds a batched decode).
            act(page, probe, lambda: probe.locator("input.sp-jitter-slider").fill("0"))
            rng = np.random.default_rng(0)
            totals = []
            for i in range(CLICKS_TIMED):
                if i % 4 == 0:
                    act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
                x, y = prompts.random_point(scene.instance_masks[0], rng)[0]
                act(page, probe, lambda: page.mouse.click(*image_to_page(canvas, x, y)))
                totals.append(float(probe.get_attribute("data-total-ms")))
            timings.update(clicks=len(totals), click_to_drawn_p50_ms=round(float(np.percentile(totals, 50)), 1),
                           click_to_drawn_p95_ms=round(float(np.percentile(totals, 95)), 1),
                           timing_line=probe.locator(".sp-timing").inner_text())
            page.set_viewport_size({"width": 1400, "height": 1700})  # the whole widget in one picture
            probe.evaluate("(root) => root.scrollIntoView({block: 'start'})")
            probe.screenshot(path=str(ARTIFACTS / "probe.png"))
        except Exception:
            # What the page looked like and said, for whoever reads the CI log.
            page.screenshot(path=str(ARTIFACTS / "probe-failure.png"), full_page=False)
            (ARTIFACTS / "probe-failure-console.txt").write_text("\n".join(console) + "\n")
            raise
        finally:
            browser.close()
    (ARTIFACTS / "probe_timing.json").write_text(json.dumps(timings, indent=2) + "\n")

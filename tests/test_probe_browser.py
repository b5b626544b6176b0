"""The prompt probe in a real browser: JupyterLab on a loopback port, Debian's chromium, playwright.

Opens notebooks/05_prompt_probe.ipynb, runs it, then uses the probe as a learner would: a
left click on an object, a right click (negative point, no context menu), keys typed inside
the widget (they must not reach JupyterLab), export then import. Saves a screenshot and the
browser's click timings to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_prompt_probe.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 60
RUN_TIMEOUT_S = 120
STEP_TIMEOUT_MS = 20_000
CLICKS_TIMED = 12

# JupyterLab settings for a quiet, predictable page: every cell in the DOM (no windowing),
# no news or update toasts.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, marker: str) -> None:
    """Stop JupyterLab (it shuts its kernels down), then anything it left that used our runtime dir."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Kernels run in their own session; ours are the processes whose command line names our folder.
    for leftover in psutil.process_iter(["pid", "cmdline"]):
        if marker in " ".join(leftover.info["cmdline"] or []):
            leftover.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port with a random token; (base url, token)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium. Run `make test` (it "
                    "installs it), or `apt-get install chromium`.", pytrace=False)
    jupyter = Path(sys.executable).with_name("jupyter")
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOK, notebooks / NOTEBOOK.name)
    for relative, settings in LAB_SETTINGS.items():
        path = root / "settings" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ, "SAMKIT_PROFILE": "smoke", "JUPYTER_CONFIG_DIR": str(root / "config"),
           "JUPYTER_DATA_DIR": str(root / "data"), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           "IPYTHONDIR": str(root / "ipython"), "SAMKIT_CACHE": str(root / "samkit-cache")}
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root / "jupyter.log", "w")  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", f"--ServerApp.token={token}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--notebook-dir={notebooks}",
         "--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{(root / 'jupyter.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n"
                                f"{(root / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        _stop(process, str(root))
        log.close()


def _notebook_state(page) -> dict:
    return page.evaluate("""() => {
        const panel = window.jupyterapp.shell.currentWidget;
        const cells = panel.content.widgets.filter((cell) => cell.model.type === "code");
        const errors = [];
        for (const cell of cells) {
            for (const output of cell.model.outputs.toJSON()) {
                if (output.output_type === "error") errors.push(`${output.ename}: ${output.evalue}`);
            }
        }
        return {kernel: panel.sessionContext.session?.kernel?.status ?? "none",
                done: cells.every((cell) => cell.model.executionCount !== null), errors,
                cells: panel.content.model.cells.length};
    }""")


def _run_notebook(page, url: str, token: str) -> None:
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.wait_for_function("""() => {
        const panel = window.jupyterapp?.shell?.currentWidget;
        return panel?.sessionContext?.session?.kernel?.status === "idle" && panel.content?.widgets?.length > 0;
    }""", timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        state = _notebook_state(page)
        assert not state["errors"], f"the notebook failed in the browser: {state['errors']}"
        if state["done"] and state["kernel"] == "idle":
            return
        assert time.monotonic() < deadline, f"the notebook did not finish in {RUN_TIMEOUT_S} s: {state}"
        time.sleep(0.5)


def _wait_for_update(page, probe, version: str) -> None:
    """Wait until the widget has drawn an update newer than `version`."""
    page.wait_for_function("([root, version]) => root.dataset.version !== version && root.dataset.totalMs !== undefined",
                           arg=[probe.element_handle(), version], timeout=STEP_TIMEOUT_MS)


def _act(page, probe, action) -> None:
    version = probe.get_attribute("data-version")
    page.evaluate("(root) => { delete root.dataset.totalMs; }", probe.element_handle())
    action()
    _wait_for_update(page, probe, version)


def _scores(probe) -> list[str]:
    return [text.strip() for text in probe.locator(".sp-cards .sp-card .sp-score").all_inner_texts()]


def _image_to_page(canvas, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of image pixel (x, y), with the canvas scrolled on screen (page.mouse needs it)."""
    canvas.evaluate("(c) => c.scrollIntoView({block: 'center'})")
    box = canvas.bounding_box()
    width = float(canvas.get_attribute("data-image-width"))
    height = float(canvas.get_attribute("data-image-height"))
    return float(box["x"] + x * box["width"] / width), float(box["y"] + y * box["height"] / height)


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
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        console = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        try:
            _run_notebook(page, url, token)
            probe = page.locator(".samkit-probe").first
            canvas = probe.locator("canvas.sp-canvas")
            page.wait_for_function("(c) => c.dataset.imageWidth === '256'", arg=canvas.element_handle(),
                                   timeout=STEP_TIMEOUT_MS)

            # Start from no prompts (the notebook left some).
            _act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
            assert probe.get_attribute("data-points") == "0" and _scores(probe) == []
            empty = _canvas_pixels(page, canvas)

            # 1. A left click on the object: masks and scores appear.
            _act(page, probe, lambda: page.mouse.click(*_image_to_page(canvas, *target_xy)))
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
            negative = _image_to_page(canvas, *negative_xy)
            _act(page, probe, lambda: page.mouse.click(*negative, button="right"))
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
            _act(page, probe, lambda: page.keyboard.press("z"))  # the widget's own undo
            assert probe.get_attribute("data-points") == "1"
            _act(page, probe, lambda: page.keyboard.press("y"))  # and redo
            assert probe.get_attribute("data-points") == "2" and _scores(probe) == second_scores
            time.sleep(0.5)  # let any stray JupyterLab command land before counting
            assert _cell_count(page) == cells_before, "a key typed in the widget changed the notebook's cells"

            # 4. Export, clear, import: the same view comes back.
            probe.get_by_role("button", name="Export").click()
            exported = probe.locator("textarea.sp-text").input_value()
            assert json.loads(exported)["labels"] == [1, 0]
            _act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
            assert probe.get_attribute("data-points") == "0" and _scores(probe) == []
            probe.get_by_role("button", name="Import").click()
            probe.locator("textarea.sp-text").fill(exported)
            _act(page, probe, lambda: probe.get_by_role("button", name="Load these prompts").click())
            assert probe.get_attribute("data-points") == "2" and _scores(probe) == second_scores
            assert not probe.locator(".sp-message.sp-error").count()
            probe.get_by_role("button", name="Close").click()

            # 5. A drag draws a box; a click on a point removes it.
            x0, y0, x1, y1 = prompts.tight_box(scene.instance_masks[0])
            start, end = _image_to_page(canvas, x0, y0), _image_to_page(canvas, x1, y1)

            def drag() -> None:
                page.mouse.move(*start)
                page.mouse.down()
                page.mouse.move(*end, steps=8)
                page.mouse.up()

            _act(page, probe, drag)
            assert probe.get_attribute("data-has-box") == "true" and probe.get_attribute("data-points") == "2"
            _act(page, probe, lambda: page.mouse.click(*_image_to_page(canvas, *negative_xy)))
            assert probe.get_attribute("data-points") == "1" and "removed" in probe.locator(".sp-message").inner_text()

            # 6. Click latency, click event to masks painted, with the jitter off (it adds a batched decode).
            _act(page, probe, lambda: probe.locator("input.sp-jitter-slider").fill("0"))
            rng = np.random.default_rng(0)
            totals = []
            for i in range(CLICKS_TIMED):
                if i % 4 == 0:
                    _act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
                x, y = prompts.random_point(scene.instance_masks[0], rng)[0]
                _act(page, probe, lambda: page.mouse.click(*_image_to_page(canvas, x, y)))
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

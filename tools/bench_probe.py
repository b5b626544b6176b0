"""The prompt probe's click-to-masks latency, for `make bench`.

Two measurements side by side: in a real browser (JupyterLab + chromium, from the click's
pointer-up event to the frame with the new masks painted: what a learner waits), and the
kernel's share alone (the Python click handler, in this process), so a slow number can be
traced to the model or to the page.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np

import samkit
from tools.labbrowser import CHROMIUM_ARGS, act, image_to_page, jupyterlab, require_chromium, run_notebook

# (result key, model name, checkpoint): TinySAM as shipped; ViT-B with random weights (the
# official file cannot be fetched here, and the latency does not depend on the weights).
PROBE_MODELS = (("tinysam", "tinysam", None), ("vitb", "sam_vit_b", "random"))
DISPLAY_WIDTH = 480  # the probe's default size on screen, in CSS pixels
CLICKS_PER_PROMPT = 4  # a learner refines a mask with a few clicks, then starts over


def _percentiles(key: str, times_ms: list[float]) -> dict:
    return {f"{key}_p50_ms": round(float(np.percentile(times_ms, 50)), 1),
            f"{key}_p95_ms": round(float(np.percentile(times_ms, 95)), 1)}


def _probe_notebook(model_name: str, checkpoint: str | None) -> nbformat.NotebookNode:
    source = ("import samkit\nfrom samkit.widgets import PromptProbe\nfrom skimage import data\n"
              f"model = samkit.load_model({model_name!r}, checkpoint={checkpoint!r}, device='cpu')\n"
              "probe = PromptProbe(model, data.coffee())\nprobe")
    # With a kernelspec, JupyterLab starts the kernel instead of asking which one to use.
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)], metadata={"kernelspec": kernelspec})


def _click_positions(count: int, height: int, width: int, seed: int) -> list[tuple[float, float, int]]:
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(0, width)), float(rng.uniform(0, height)), int(i % CLICKS_PER_PROMPT != 3))
            for i in range(count)]


def browser_latency(clicks: int = 40, vitb_clicks: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Click-to-drawn latency in JupyterLab on a 400 x 600 photo, TinySAM and ViT-B; p50 and p95 in ms."""
    from playwright.sync_api import sync_playwright
    from skimage import data

    height, width = data.coffee().shape[:2]
    results = {}
    with tempfile.TemporaryDirectory(prefix="samkit-bench-lab-") as folder:
        root = Path(folder)
        (root / "notebooks").mkdir()
        for key, model_name, checkpoint in PROBE_MODELS:
            nbformat.write(_probe_notebook(model_name, checkpoint), root / "notebooks" / f"probe_{key}.ipynb")
        with jupyterlab(root, {"SAMKIT_CACHE": str(root / "samkit-cache")}) as (url, token), \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(require_chromium()), args=CHROMIUM_ARGS)
            try:
                for key, _, _ in PROBE_MODELS:
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    run_notebook(page, url, token, f"probe_{key}.ipynb", timeout_s=300)
                    probe = page.locator(".samkit-probe").first
                    canvas = probe.locator("canvas.sp-canvas")
                    page.wait_for_function(f"(c) => c.dataset.imageWidth === '{width}'", arg=canvas.element_handle())
                    count = (clicks if key == "tinysam" else vitb_clicks) + warmup
                    times, kernel_times = [], []
                    for i, (x, y, positive) in enumerate(_click_positions(count, height, width, seed)):
                        if i % CLICKS_PER_PROMPT == 0:
                            act(page, probe, lambda: probe.get_by_role("button", name="Clear").click())
                        position = image_to_page(canvas, x, y)
                        act(page, probe, lambda: page.mouse.click(*position, button="left" if positive else "right"))
                        if i >= warmup:
                            times.append(float(probe.get_attribute("data-total-ms")))
                            kernel_times.append(float(probe.get_attribute("data-kernel-ms")))
                    results.update(_percentiles(f"probe_{key}", times))
                    results[f"probe_{key}_kernel_share_p50_ms"] = round(float(np.median(kernel_times)), 1)
                    page.close()
            finally:
                browser.close()
    results["probe_clicks"] = {"tinysam": clicks, "sam_vit_b": vitb_clicks}
    return results


def kernel_latency(clicks: int = 40, vitb_clicks: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """The Python click handler alone (decode, metrics, packing, widget update), in this process."""
    from skimage import data

    from samkit.widgets import PromptProbe

    photo = data.coffee()
    height, width = photo.shape[:2]
    canvas = [height * DISPLAY_WIDTH / width, float(DISPLAY_WIDTH)]
    results = {}
    for key, model_name, checkpoint in PROBE_MODELS:
        model = samkit.load_model(model_name, checkpoint=checkpoint, device="cpu")
        probe = PromptProbe(samkit.Predictor(model, disk_cache=False), photo)
        count = (clicks if key == "tinysam" else vitb_clicks) + warmup
        times = []
        for i, (x, y, positive) in enumerate(_click_positions(count, height, width, seed)):
            if i % CLICKS_PER_PROMPT == 0:
                probe.clear()
            message = {"type": "click", "x": x * DISPLAY_WIDTH / width, "y": y * DISPLAY_WIDTH / width,
                       "label": positive, "canvas": canvas}
            start = time.perf_counter()
            probe.handle(message)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
        results.update(_percentiles(f"probe_kernel_{key}", times))
        results[f"probe_{key}_encoder_calls"] = probe.predictor.encoder_calls  # 1: clicks never encode
    return results

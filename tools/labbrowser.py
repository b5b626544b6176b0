"""JupyterLab in a real browser, for the probe's browser test and its latency benchmark.

A JupyterLab server on a free loopback port (private config, random token), Debian's chromium
driven by playwright-python (playwright downloads no browser here), and the few page helpers both
callers need: run a notebook, wait for the probe to draw an update.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 60
STEP_TIMEOUT_MS = 20_000

# A quiet, predictable page: every cell in the DOM (no windowing), no news or update toasts.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


class LabError(RuntimeError):
    """JupyterLab or the browser did not come up, or a notebook failed in it."""


def require_chromium() -> Path:
    """The chromium binary, or a clear error saying how to get it."""
    if not CHROMIUM.exists():
        raise LabError(f"{CHROMIUM} is missing: the browser checks need Debian's chromium. Run `make test` "
                       "or `make bench` (they install it), or `apt-get install chromium`.")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, marker: str) -> None:
    """Stop JupyterLab (it shuts its kernels down), then anything it left that used our folder."""
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


@contextmanager
def jupyterlab(root: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Serve `root/notebooks` with JupyterLab on a free loopback port; yields (base url, token).

    Config, data, runtime and settings live under `root`, so the user's own JupyterLab set-up is
    neither read nor changed. `env` is added to the server's (and its kernels') environment.
    """
    jupyter = Path(sys.executable).with_name("jupyter")
    notebooks = root / "notebooks"
    for relative, settings in LAB_SETTINGS.items():
        path = root / "settings" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    full_env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_DATA_DIR": str(root / "data"),
                "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"), "IPYTHONDIR": str(root / "ipython"),
                **(env or {})}
    port, token = _free_port(), secrets.token_hex(16)
    log_path = root / "jupyter.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", f"--port={port}", f"--ServerApp.token={token}",
             "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--notebook-dir={notebooks}",
             "--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise LabError(f"JupyterLab exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise LabError(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n"
                                       f"{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url, token
        finally:
            _stop(process, str(root))


def notebook_state(page) -> dict:
    """Kernel status, whether every code cell ran, the errors in the outputs, the number of cells."""
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


def run_notebook(page, url: str, token: str, name: str, timeout_s: float = 120) -> None:
    """Open notebooks/`name` in JupyterLab and run all its cells; raise on an error or a timeout.

    Each notebook opens in a workspace of its own, so notebooks opened before it stay closed.
    """
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}")
    page.wait_for_function("""() => {
        const panel = window.jupyterapp?.shell?.currentWidget;
        return panel?.sessionContext?.session?.kernel?.status === "idle" && panel.content?.widgets?.length > 0;
    }""", timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + timeout_s
    while True:
        state = notebook_state(page)
        if state["errors"]:
            raise LabError(f"{name} failed in the browser: {state['errors']}")
        if state["done"] and state["kernel"] == "idle":
            return
        if time.monotonic() > deadline:
            raise LabError(f"{name} did not finish in {timeout_s} s: {state}")
        time.sleep(0.5)


def act(page, probe, action: Callable[[], None]) -> None:
    """Run a gesture on the probe (a playwright locator) and wait until it has drawn the answer."""
    version = probe.get_attribute("data-version")
    page.evaluate("(root) => { delete root.dataset.totalMs; }", probe.element_handle())
    action()
    page.wait_for_function("([root, version]) => root.dataset.version !== version && root.dataset.totalMs !== undefined",
                           arg=[probe.element_handle(), version], timeout=STEP_TIMEOUT_MS)


def image_to_page(canvas, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of image pixel (x, y), with the canvas scrolled on screen (page.mouse needs it)."""
    canvas.evaluate("(c) => c.scrollIntoView({block: 'center'})")
    box = canvas.bounding_box()
    width = float(canvas.get_attribute("data-image-width"))
    height = float(canvas.get_attribute("data-image-height"))
    return float(box["x"] + x * box["width"] / width), float(box["y"] + y * box["height"] / height)

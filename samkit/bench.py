"""`make bench`: speed ratios measured side by side in one run, printed as one JSON object."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

import samkit
from samkit.datasets import ShapeScenes
from samkit.datasets.shapescenes import scenes_per_second


def _timed(function, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls (the minimum is the least noisy estimate)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def decode_batched_vs_loop(model_name: str = "tinysam", prompts: int = 200, seed: int = 0) -> dict:
    """200 click prompts on one image: one batched decoder call vs a Python loop of 200 calls."""
    model = samkit.load_model(model_name, checkpoint="random", device="cpu")
    rng = np.random.default_rng(seed)
    scene = ShapeScenes("test", "all", n=1, seed=seed, size=model.image_size)[0]
    embedding = model.embed(scene.image)
    points = rng.uniform(0, model.image_size - 1, size=(prompts, 1, 2)).astype(np.float32)
    labels = np.ones((prompts, 1), dtype=np.int64)
    with torch.inference_mode():
        def batched():
            sparse, dense = model.prompt_tokens(points, labels)
            return model.decode(embedding, sparse, dense)

        def loop():
            outputs = [model.decode(embedding, *model.prompt_tokens(points[i], labels[i])) for i in range(prompts)]
            return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

        batched_out, loop_out = batched(), loop()
        same = bool(torch.allclose(batched_out[0], loop_out[0], atol=1e-4)
                    and torch.allclose(batched_out[1], loop_out[1], atol=1e-5))
        batched_s, loop_s = _timed(batched, 3), _timed(loop, 3)
    return {"decode_batched_speedup": round(loop_s / batched_s, 1), "decode_batched_s": round(batched_s, 4),
            "decode_loop_s": round(loop_s, 4), "decode_model": model_name, "decode_prompts": prompts,
            "decode_same_results": same}


def cached_set_image(model_name: str = "sam_vit_b") -> dict:
    """First vs second `set_image` of one image on the ViT-B architecture (random weights)."""
    model = samkit.load_model(model_name, checkpoint="random", device="cpu")
    predictor = samkit.Predictor(model)
    image = ShapeScenes("test", "all", n=1, seed=0, size=512)[0].image
    first_s = _timed(lambda: predictor.set_image(image))
    second_s = _timed(lambda: predictor.set_image(image), 5)
    return {"cached_set_image_speedup": round(first_s / second_s, 1), "set_image_first_s": round(first_s, 3),
            "set_image_second_s": round(second_s, 6), "set_image_model": model_name,
            "set_image_encoder_calls": predictor.encoder_calls}


def main() -> None:
    torch.manual_seed(0)
    results = {"torch_threads": torch.get_num_threads()}
    results.update(decode_batched_vs_loop())
    results.update(cached_set_image())
    results["shapescenes_per_second"] = round(scenes_per_second(n=200), 1)
    results["targets"] = {"decode_batched_speedup": ">= 10", "cached_set_image_speedup": ">= 100",
                          "shapescenes_per_second": ">= 200"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()


def probe_latency(clicks: int = 60, vitb_clicks: int = 20, seed: int = 0) -> dict:
    """Click-to-masks latency of the prompt probe on a 400 x 600 photo, TinySAM and ViT-B (random weights).

    Measures the probe's Python click handler end to end, exactly what a browser click runs in the
    kernel: canvas -> image transform, prompt state, the decoder for the 3 candidates and the single
    mask, metrics, bit-packing the masks and serialising the widget update. The browser's transfer and
    draw (a few ms, measured by tests/test_probe_browser.py) are not included.
    """
    from skimage import data as skdata

    from samkit.widgets import PromptProbe

    photo = skdata.coffee()
    height, width = photo.shape[:2]
    canvas = [height * 480 / width, 480.0]  # the probe's default display size, in CSS pixels
    rng = np.random.default_rng(seed)
    results = {}
    for key, name, count in (("tinysam", "tinysam", clicks), ("vitb", "sam_vit_b", vitb_clicks)):
        model = samkit.load_model(name, checkpoint="random", device="cpu")
        probe = PromptProbe(samkit.Predictor(model, disk_cache=False), photo)
        times = []
        for i in range(count + 3):  # the first 3 warm up
            if i % 4 == 0:
                probe.clear()  # up to 4 clicks per prompt set, as when a learner refines a mask
            message = {"type": "click", "x": float(rng.uniform(0, canvas[1])), "y": float(rng.uniform(0, canvas[0])),
                       "label": int(i % 4 != 3), "canvas": canvas}
            start = time.perf_counter()
            probe.handle(message)
            if i >= 3:
                times.append(time.perf_counter() - start)
        times_ms = np.array(times) * 1e3
        results[f"probe_{key}_p50_ms"] = round(float(np.percentile(times_ms, 50)), 1)
        results[f"probe_{key}_p95_ms"] = round(float(np.percentile(times_ms, 95)), 1)
        results[f"probe_{key}_encoder_calls"] = probe.predictor.encoder_calls  # 1: clicks never encode
    results["probe_clicks"] = {"tinysam": clicks, "sam_vit_b": vitb_clicks}
    results["probe_measured"] = ("Python click handler end to end on a 400x600 photo (decode 3 candidates + single "
                                 "mask, pack masks, serialise the widget update); browser transfer + draw excluded")
    return results

"""The prompt probe, Python side: prompt state, canvas geometry, message handlers, export/import.

The browser half is tested in test_probe_browser.py; here every message the browser sends is
fed to the same handler directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import samkit
from samkit import metrics, prompts
from samkit.datasets import ShapeScenes
from samkit.datasets.shapescenes import VOCABULARY
from samkit.models.base import SamAdapter
from samkit.widgets import CanvasTransform, PromptProbe, PromptState, Prompts
from samkit.widgets.inference import jitter_masks, pack_masks, unpack_masks
from samkit.widgets.exchange import EXPORT_FORMAT


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    # Random weights: these tests check the probe's plumbing, not TinySAM's quality.
    return samkit.load_model("tinysam", checkpoint="random", device="cpu")


@pytest.fixture(scope="module")
def scene():
    return ShapeScenes("test", "base", n=4, seed=0)[1]


@pytest.fixture()
def predictor(model):
    return samkit.Predictor(model, disk_cache=False)


@pytest.fixture()
def probe(predictor, scene):
    return PromptProbe(predictor, scene.image, gt_mask=scene.instance_masks[0])


def centre(scene, index=0):
    x, y = prompts.center_point(scene.instance_masks[index])[0]
    return float(x), float(y)


# ---- canvas geometry ---------------------------------------------------------------------------
def test_canvas_transform_square_round_trip():
    transform = CanvasTransform((256, 256), (512, 512))
    assert transform.scale == 2.0 and transform.offset == (0.0, 0.0)
    assert transform.to_image(100, 50) == (50.0, 25.0)
    assert transform.to_canvas(50.0, 25.0) == (100.0, 50.0)


def test_canvas_transform_letterboxes_a_non_square_image():
    # A 400 x 600 (H x W) photo in a 300 x 300 canvas: scale 0.5, 50 px bands above and below.
    transform = CanvasTransform((400, 600), (300, 300))
    assert transform.scale == 0.5
    assert transform.offset == (0.0, 50.0)
    assert transform.to_image(150, 150) == (300.0, 200.0)
    assert transform.to_canvas(*transform.to_image(12.5, 77.0)) == pytest.approx((12.5, 77.0))
    with pytest.raises(ValueError, match="x, y"):
        transform.to_image(150, 10)  # in the band above the image
    assert transform.to_image(-20, 400, clip=True) == (0.0, 400.0)


@pytest.mark.parametrize("size", [(0, 10), (10,), "big", (10, -1)])
def test_canvas_transform_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="canvas_size"):
        CanvasTransform((10, 10), size)


# ---- prompt state ------------------------------------------------------------------------------
def test_state_add_remove_undo_redo():
    state = PromptState((100, 200))
    state.add_point(10, 20)
    state.add_point(30.04, 40, label=0)
    state.set_box(150, 90, 20, 10)  # dragged up and left: stored as XYXY
    assert state.prompts.points == ((10.0, 20.0), (30.0, 40.0))  # kept to 0.1 px
    assert state.prompts.labels == (1, 0)
    assert state.prompts.box == (20.0, 10.0, 150.0, 90.0)
    state.remove_point(0)
    assert state.prompts.points == ((30.0, 40.0),)
    assert state.undo() and state.prompts.points == ((10.0, 20.0), (30.0, 40.0))
    assert state.undo() and state.prompts.box is None
    assert state.redo() and state.prompts.box == (20.0, 10.0, 150.0, 90.0)
    state.clear()
    assert state.prompts.empty and state.can_undo and not state.can_redo
    state.undo()
    state.add_point(5, 5)  # a new edit drops the redo history
    assert not state.can_redo
    while state.undo():
        pass
    assert state.prompts.empty and not state.can_undo


def test_state_click_on_a_point_removes_it():
    state = PromptState((100, 100))
    assert state.click(50, 50, radius=3) == "added"
    assert state.click(60, 50, label=0, radius=3) == "added"
    assert state.click(51.5, 51, radius=3) == "removed"  # within 3 px of (50, 50)
    assert state.prompts.points == ((60.0, 50.0),) and state.prompts.labels == (0,)


def test_state_box_is_clipped_to_the_image():
    state = PromptState((100, 200))
    state.set_box(-30, 50, 250, 130)
    assert state.prompts.box == (0.0, 50.0, 200.0, 100.0)


@pytest.mark.parametrize("call, argument", [
    (lambda s: s.add_point(250, 10), "x, y"),
    (lambda s: s.add_point(10, 10, label=2), "label"),
    (lambda s: s.add_point(10, 10, label=True), "label"),
    (lambda s: s.add_point(float("nan"), 10), "x"),
    (lambda s: s.remove_point(3), "index"),
    (lambda s: s.set_options(multimask="yes"), "multimask"),
])
def test_state_rejects_bad_input(call, argument):
    state = PromptState((100, 200))
    with pytest.raises(ValueError, match=argument):
        call(state)
    assert state.prompts.empty and not state.can_undo  # nothing half-applied


def test_state_feed_mask_chain_and_undo():
    state = PromptState((100, 100))
    state.set_options(feed_mask=True)
    state.add_point(10, 10)
    state.add_point(20, 20)
    state.add_point(30, 30, label=0)
    assert [len(link.points) for link in state.current.chain] == [1, 2]
    state.undo()
    assert [len(link.points) for link in state.current.chain] == [1]
    state.set_options(feed_mask=False)
    assert state.current.chain == ()
    state.undo()
    assert state.current.feed_mask and len(state.current.chain) == 1


def test_state_dict_round_trip():
    state = PromptState((100, 200))
    state.set_options(multimask=False, feed_mask=True)
    state.add_point(10, 20)
    state.add_point(30, 40, label=0)
    state.set_box(5, 6, 70, 80)
    data = json.loads(json.dumps(state.to_dict()))
    other = PromptState((100, 200))
    other.load_dict(data)
    assert other.current == state.current


@pytest.mark.parametrize("data, argument", [
    ({"points": [[10, 500]], "labels": [1]}, r"prompts\.points\[0\]"),
    ({"points": [[10, 5]], "labels": [7]}, r"prompts\.labels\[0\]"),
    ({"points": [[10, 5]], "labels": []}, r"prompts\.points/labels"),
    ({"points": [], "labels": [], "box": [50, 5, 10, 20]}, r"prompts\.box"),
    ({"points": [], "labels": [], "options": {"multimask": "no"}}, r"prompts\.options\.multimask"),
    ("not a dict", "prompts"),
])
def test_state_rejects_bad_dicts(data, argument):
    with pytest.raises(ValueError, match=argument):
        PromptState((100, 200)).load_dict(data)


# ---- mask transfer --------------------------------------------------------------------------
def test_pack_masks_round_trip_on_an_odd_size():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.5
    data = pack_masks(masks)
    assert len(data) == 4 * -(-37 * 53 // 8)  # one bit a pixel
    assert np.array_equal(unpack_masks(data, 4, (37, 53)), masks)


# ---- the probe ------------------------------------------------------------------------------
def test_click_gives_three_candidates_and_the_single_mask(probe, predictor, scene):
    x, y = centre(scene)
    result = probe.click(x, y)
    masks, scores, _ = predictor.predict(points=np.array([[round(x, 1), round(y, 1)]]), labels=np.array([1]))
    single, single_score, _ = predictor.predict(points=np.array([[round(x, 1), round(y, 1)]]), labels=np.array([1]),
                                                multimask=False)
    assert np.array_equal(result.masks, masks) and np.allclose(result.scores, scores)
    assert np.array_equal(result.single_mask, single[0]) and result.single_score == pytest.approx(float(single_score[0]))
    assert result.pick == int(np.argmax(scores)) and np.array_equal(result.mask, masks[result.pick])
    # What the browser receives: the view (JSON) and 4 bit-packed masks (binary, not JSON lists).
    view = probe.view
    assert view["result"]["pick"] == result.pick and len(view["result"]["candidates"]) == 3
    assert np.array_equal(unpack_masks(probe.masks, 4, scene.image.shape[:2]), result.all_masks)
    assert len(json.dumps(view)) < 20_000
    gt = scene.instance_masks[0]
    for row, mask in zip(view["result"]["candidates"], masks):
        assert row["iou"] == pytest.approx(metrics.iou(mask, gt), abs=1e-4)
        assert row["dice"] == pytest.approx(metrics.dice(mask, gt), abs=1e-4)
        assert row["area"] == int(mask.sum())


def test_encoder_runs_once_across_many_clicks(probe, predictor, scene):
    assert predictor.encoder_calls == 1
    rng = np.random.default_rng(0)
    height, width = scene.image.shape[:2]
    for i in range(25):
        probe.click(float(rng.uniform(0, width)), float(rng.uniform(0, height)), label=i % 2)
    probe.drag_box(10, 10, 120, 140)
    probe.undo()
    probe.redo()
    probe.set_options(multimask=False, feed_mask=True, jitter=3)
    probe.click(*centre(scene))
    probe.save_variant("a")
    probe.import_json(probe.export_json())
    probe.python_code()
    assert predictor.encoder_calls == 1


def test_browser_messages_use_canvas_coordinates_on_a_non_square_image(predictor):
    from skimage import data as skdata

    photo = skdata.coffee()  # 400 x 600
    probe = PromptProbe(predictor, photo)
    # The browser shows it 300 css px wide (200 high) and sends canvas coordinates.
    probe.handle({"type": "click", "x": 150, "y": 100, "label": 1, "canvas": [200, 300], "seq": 1, "origin": "v"})
    assert probe.view["seq"] == 1 and probe.view["origin"] == "v"  # so the browser can time its own click
    probe.handle({"type": "click", "x": 30, "y": 20, "label": 0, "canvas": [200, 300]})
    assert probe.points.tolist() == [[300.0, 200.0], [60.0, 40.0]] and probe.labels.tolist() == [1, 0]
    assert probe.result.masks.shape == (3, 400, 600)
    # A click within 8 css px of a point removes it, at this display scale 16 image px.
    probe.handle({"type": "click", "x": 154, "y": 97, "label": 1, "canvas": [200, 300]})
    assert probe.points.tolist() == [[60.0, 40.0]]
    # A drag past the canvas edge gives a box clipped to the image, corners in XYXY order.
    probe.handle({"type": "box", "x0": 250, "y0": 180, "x1": 350, "y1": -10, "canvas": [200, 300]})
    assert probe.box.tolist() == [500.0, 0.0, 600.0, 360.0]
    assert predictor.encoder_calls == 1


def test_undo_redo_restore_the_same_masks(probe, scene):
    first = probe.click(*centre(scene)).masks.copy()
    second = probe.click(*centre(scene, 1), label=0).masks.copy()
    assert np.array_equal(probe.undo().masks, first)
    assert np.array_equal(probe.redo().masks, second)
    assert probe.clear() is None and probe.view["result"] is None and probe.masks == b""
    assert np.array_equal(probe.undo().masks, second)


def test_options_multimask_and_feed_mask(probe, predictor, scene):
    x, y = centre(scene)
    probe.click(x, y)
    probe.set_options(multimask=False)
    result = probe.result
    assert np.array_equal(result.mask, result.single_mask) and probe.view["result"]["shown"] == 3
    probe.set_options(feed_mask=True)
    probe.click(x + 5, y + 5)  # decoded with the previous result's low-res mask
    arguments = dict(points=np.array([[round(x, 1), round(y, 1)]]), labels=np.array([1]), multimask=False)
    _, _, low_res = predictor.predict(**arguments)
    arguments["points"] = np.array([[round(x, 1), round(y, 1)], [round(x + 5, 1), round(y + 5, 1)]])
    arguments["labels"] = np.array([1, 1])
    fed, _, _ = predictor.predict(**arguments, mask_input=low_res[0][None])
    assert np.array_equal(probe.result.single_mask, fed[0])
    assert probe.view["chain_length"] == 1


def test_export_import_round_trip(probe, predictor, scene):
    probe.click(*centre(scene))
    probe.save_variant("click")
    probe.drag_box(*prompts.tight_box(scene.instance_masks[0]))
    probe.click(*centre(scene, 1), label=0)
    probe.set_options(jitter=2.5)
    before = probe.summary()
    text = probe.export_json()
    data = json.loads(text)
    assert data["format"] == EXPORT_FORMAT and data["image_sha256"] == predictor.image_sha256
    assert data["model"] == "tinysam" and data["labels"] == [1, 0] and data["box"] is not None
    assert data["options"] == {"multimask": True, "feed_mask": False, "jitter": 2.5,
                               "jitter_samples": probe.jitter_samples}
    assert data["scores"]["candidates"][0]["score"] == before["candidates"][0]["score"]
    # A fresh probe on the same image restores the same view from the text.
    other = PromptProbe(predictor, scene.image, gt_mask=scene.instance_masks[0])
    other.import_json(text)
    assert other.summary() == before
    assert other.points.tolist() == probe.points.tolist() and other.box.tolist() == probe.box.tolist()
    assert list(other.variants) == ["click"] and other.jitter == 2.5
    assert np.array_equal(other.variants["click"].mask, probe.variants["click"].mask)
    assert other.undo() is None  # the import is one undo step


def test_import_with_feed_mask_replays_the_chain(probe, predictor, scene):
    probe.set_options(feed_mask=True)
    x, y = centre(scene)
    for step in range(3):
        probe.click(x + 4 * step, y)
    expected = probe.result.masks.copy()
    other = PromptProbe(samkit.Predictor(predictor.model, disk_cache=False), scene.image)
    other.import_json(probe.export_json())
    assert np.array_equal(other.result.masks, expected)


def test_import_rejects_another_image_and_bad_text(probe, scene):
    probe.click(*centre(scene))
    text = probe.export_json()
    state = probe.state.current
    wrong_image = json.loads(text) | {"image_sha256": "0" * 64}
    with pytest.raises(ValueError, match="prompts_json: expected prompts for this image"):
        probe.import_json(json.dumps(wrong_image))
    with pytest.raises(ValueError, match="prompts_json: expected valid JSON"):
        probe.import_json("{not json")
    with pytest.raises(ValueError, match="format"):
        probe.import_json(json.dumps({"points": []}))
    bad_point = json.loads(text) | {"points": [[1e6, 1]], "labels": [1]}
    with pytest.raises(ValueError, match=r"prompts_json\.points\[0\]"):
        probe.import_json(json.dumps(bad_point))
    assert probe.state.current == state  # nothing changed


def test_copy_as_python_reproduces_the_masks(probe, predictor, scene):
    probe.set_options(feed_mask=True)
    probe.click(*centre(scene))
    probe.drag_box(*prompts.tight_box(scene.instance_masks[0]))
    probe.click(*centre(scene, 1), label=0)
    code = probe.python_code()
    assert code.count("predictor.predict(") == 3 and "mask_input=low_res[scores.argmax()][None]" in code
    namespace = {"predictor": predictor}
    exec(compile(code, "<probe>", "exec"), namespace)  # the text a learner pastes
    assert np.array_equal(namespace["mask"], probe.result.mask)
    assert np.array_equal(namespace["masks"], probe.result.masks)


def test_jitter_spread(probe, predictor, scene):
    probe.click(*centre(scene))
    still = probe.jitter_spread(0.0, samples=6)
    assert np.all(still["ious"] == 1.0) and still["changed"] == 0.0
    assert set(np.unique(still["frequency"])) <= {0.0, 1.0}
    shaken = probe.jitter_spread(12.0, samples=6)
    assert shaken["frequency"].shape == scene.image.shape[:2]
    assert 0.0 <= shaken["frequency"].min() and shaken["frequency"].max() <= 1.0
    assert np.array_equal(shaken["ious"], probe.jitter_spread(12.0, samples=6)["ious"])  # seeded
    # The batched decode equals decoding one perturbed prompt at a time.
    rng = np.random.default_rng(3)
    batched = jitter_masks(predictor, probe.state.prompts, 5.0, 3, rng)
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 5.0, size=(3, 1, 2))
    for i in range(3):
        point = np.clip(np.asarray(probe.state.prompts.points) + noise[i], 0, [256, 256])
        masks, scores, _ = predictor.predict(points=point, labels=np.array([1]))
        assert np.mean(masks[scores.argmax()] != batched[i]) < 1e-3
    probe.set_options(jitter=4)
    stats = probe.view["jitter"]
    assert stats["samples"] == probe.jitter_samples and len(probe.spread) == 256 * 256


def test_variants_and_their_ious(probe, scene):
    probe.click(*centre(scene))
    probe.save_variant("click")
    probe.clear()
    probe.drag_box(*prompts.tight_box(scene.instance_masks[0]))
    probe.save_variant("box")
    names, matrix = probe.variant_ious()
    assert names == ["click", "box", "current"]
    assert np.allclose(np.diag(matrix), 1.0) and np.allclose(matrix, matrix.T)
    assert matrix[0, 1] == pytest.approx(metrics.iou(probe.variants["click"].mask, probe.variants["box"].mask))
    assert np.array_equal(unpack_masks(probe.variant_masks, 2, scene.image.shape[:2])[0], probe.variants["click"].mask)
    probe.load_variant("click")
    assert len(probe.points) == 1 and probe.box is None
    probe.remove_variant("box")
    assert list(probe.variants) == ["click"]


def test_errors_from_the_browser_are_shown_in_the_widget(probe):
    version = probe.view["version"]
    probe._on_frontend_message(probe, {"type": "click", "x": 5, "y": 900, "canvas": [100, 100], "label": 1}, [])
    assert probe.view["error"] and "x, y" in probe.view["message"] and probe.view["version"] == version + 1
    probe._on_frontend_message(probe, {"type": "teleport"}, [])
    assert probe.view["error"] and "content.type" in probe.view["message"]
    with pytest.raises(ValueError, match="content.type"):
        probe.handle({"type": "teleport"})
    with pytest.raises(ValueError, match="content.type"):
        probe.handle({"type": "frontend_message"})  # only message types reach a handler
    with pytest.raises(ValueError, match="jitter"):
        probe.set_options(multimask=False, jitter=-2)
    assert probe.state.current.multimask  # a bad option changes none of them
    probe._on_frontend_message(probe, {"type": "undo"}, [])
    assert not probe.view["error"]


def test_drawn_message_records_browser_timing(probe, scene):
    probe.handle({"type": "click", "x": 100, "y": 100, "label": 1, "canvas": [256, 256], "seq": 7, "origin": "v1"})
    probe.handle({"type": "drawn", "seq": 7, "origin": "v1", "transfer_ms": 3.5, "draw_ms": 2.0, "total_ms": 20.0})
    entry = probe.timings[-1]
    assert entry["seq"] == 7 and entry["transfer_ms"] == 3.5 and entry["draw_ms"] == 2.0
    assert entry["decode_ms"] > 0 and entry["python_ms"] >= entry["decode_ms"]


def test_set_image_encodes_once_with_a_status(probe, predictor, scene):
    statuses = []
    probe.observe(lambda change: statuses.append(change["new"]), names="status")
    probe.click(*centre(scene))
    other = ShapeScenes("test", "base", n=4, seed=0)[2].image
    probe.set_image(other)
    assert statuses[0].startswith("encoding") and statuses[-1].startswith("ready: image encoded")
    assert predictor.encoder_calls == 2 and probe.result is None and len(probe.points) == 0
    assert not probe.state.can_undo  # old prompts mean nothing on the new image
    probe.set_image(scene.image)  # seen before: from the Predictor's memory
    assert predictor.encoder_calls == 2 and "cache" in probe.status


def test_constructor_rejects_bad_input(predictor, scene):
    with pytest.raises(ValueError, match="model_or_predictor"):
        PromptProbe("tinysam", scene.image)
    with pytest.raises(ValueError, match="gt_mask"):
        PromptProbe(predictor, scene.image, gt_mask=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="image"):
        PromptProbe(predictor, np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="jitter"):
        PromptProbe(predictor, scene.image, jitter=-1)


def test_front_end_assets_ship_with_the_package():
    assert "export default" in str(PromptProbe._esm) and "keydown" in str(PromptProbe._esm)
    assert ".samkit-probe" in str(PromptProbe._css)
    assert Prompts().empty


def test_one_decoder_run_equals_two_predict_calls(probe, scene, monkeypatch):
    """The adapter's one decoder run for both outputs (segment_anything, TinySAM v2) changes no pixel against two runs."""
    from samkit.widgets import inference

    probe.set_options(feed_mask=True)
    probe.click(*centre(scene))
    probe.drag_box(*prompts.tight_box(scene.instance_masks[0]))
    fast = probe.result
    monkeypatch.setattr(type(probe.predictor.model), "decode_both", SamAdapter.decode_both)  # two runs
    probe.memo.clear()
    slow = inference.predict_snapshot(probe.predictor, probe.state.current, probe.memo)
    assert np.array_equal(fast.all_masks, slow.all_masks)
    assert np.allclose(fast.scores, slow.scores, atol=1e-6) and np.allclose(fast.low_res, slow.low_res, atol=1e-5)


def test_probe_works_with_a_sam2_model(scene):
    """Other adapters take the generic path: two Predictor.predict calls per click."""
    model = samkit.load_model("sam2.1_hiera_t", checkpoint="random", device="cpu")
    predictor = samkit.Predictor(model, disk_cache=False)
    probe = PromptProbe(predictor, scene.image, gt_mask=scene.instance_masks[0])
    x, y = centre(scene)
    result = probe.click(x, y)
    masks, scores, _ = predictor.predict(points=np.array([[round(x, 1), round(y, 1)]]), labels=np.array([1]))
    assert np.array_equal(result.masks, masks) and np.allclose(result.scores, scores)
    probe.drag_box(*prompts.tight_box(scene.instance_masks[0]))
    probe.set_options(jitter=3)
    assert probe.view["jitter"]["samples"] == probe.jitter_samples
    assert predictor.encoder_calls == 1


def test_two_probes_can_share_a_predictor(predictor, scene):
    from skimage import data as skdata

    first = PromptProbe(predictor, scene.image)
    second = PromptProbe(predictor, skdata.coffee())  # sets the predictor to the photo
    result = first.click(*centre(scene))  # must decode on the scene, not on the photo
    assert result.masks.shape == (3, 256, 256)
    assert np.array_equal(result.masks, predictor.predict(points=first.points, labels=first.labels)[0])
    assert second.click(300, 200).masks.shape == (3, 400, 600)
    assert first.jitter_spread(2.0, samples=2)["frequency"].shape == (256, 256)
    assert predictor.encoder_calls == 2  # switching back and forth takes embeddings from memory


def test_probe_works_with_a_transformers_model(scene, tmp_path):
    """The `hf:` adapter (a small transformers SamModel, random weights, saved as a folder) behind the probe."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, SamVisionConfig

    torch.manual_seed(0)
    vision = SamVisionConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1])
    SamModel(SamConfig(vision_config=vision.to_dict())).save_pretrained(tmp_path)
    SamProcessor(SamImageProcessor()).save_pretrained(tmp_path)
    predictor = samkit.Predictor(samkit.load_model(f"hf:{tmp_path}", device="cpu"), disk_cache=False)
    probe = PromptProbe(predictor, scene.image, gt_mask=scene.instance_masks[0])
    x, y = centre(scene)
    result = probe.click(x, y)
    masks, scores, _ = predictor.predict(points=np.array([[round(x, 1), round(y, 1)]]), labels=np.array([1]))
    assert result.masks.shape == (3, 256, 256)
    assert np.array_equal(result.masks, masks) and np.allclose(result.scores, scores)
    view = probe.view["result"]  # 3 candidates and the single mask, each with its true IoU and Dice
    assert len(view["candidates"]) == 3 and all("iou" in row and "dice" in row
                                                for row in [*view["candidates"], view["single"]])
    probe.negative_click(*prompts.center_point(~scene.instance_masks[0])[0])
    assert probe.points.shape == (2, 2) and predictor.encoder_calls == 1


def test_a_class_name_is_a_prompt_with_a_text_model(predictor):
    # The shipped text-conditioned TinySAM: the name's mask must find the class far better than chance.
    scene = ShapeScenes("test", "all", n=4, seed=2)[0]
    text_model = samkit.load_model("text_tinysam", device="cpu")
    areas = np.bincount(scene.semantic.ravel(), minlength=len(VOCABULARY))
    known = [c for c in np.argsort(-areas) if VOCABULARY[c] not in text_model.rare_classes]
    name = VOCABULARY[known[0]]  # the largest class the model was not made to know badly
    truth = scene.semantic == known[0]
    probe = PromptProbe(predictor, scene.image, gt_mask=truth, text_model=text_model)
    assert probe.view["name"] == {"available": True, "name": None}
    mask = probe.prompt_name(name)
    assert mask.shape == truth.shape and metrics.iou(mask, truth) > 0.5
    others = scene.semantic != known[0]
    assert mask[others].mean() < 0.1  # where another class is, the name rarely wins
    assert probe.view["name"]["name"] == name and probe.view["name"]["iou"] == pytest.approx(metrics.iou(mask, truth), abs=1e-4)
    assert np.array_equal(unpack_masks(probe.name_mask, 1, truth.shape)[0], mask)  # what the browser draws
    calls = probe.text_predictor.encoder_calls
    probe.prompt_name(name)
    assert probe.text_predictor.encoder_calls == calls  # the image is encoded once per image
    assert probe.prompt_name(None) is None and probe.name_mask == b"" and probe.view["name"]["name"] is None


def test_a_class_name_without_a_text_model_is_a_clear_error(probe):
    assert probe.view["name"] == {"available": False, "name": None}
    with pytest.raises(ValueError, match="text_model"):
        probe.prompt_name("crab")
    with pytest.raises(ValueError, match="text_model: expected a model that segments by class name"):
        PromptProbe(probe.predictor, probe.image, text_model=probe.predictor.model)  # segments by clicks only

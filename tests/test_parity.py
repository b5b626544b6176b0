"""samkit.Predictor gives the same masks as each official predictor on the same weights.

Checkpoints are built locally in the official formats (random weights) and loaded through
`load_model(name, checkpoint=path)`: the code path a user with a real file takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit

# (name, prompts) in original image pixels of the 400 x 600 photo.
CASES = {
    "one point": dict(points=np.array([[300.0, 200.0]]), labels=np.array([1])),
    "points with a negative": dict(points=np.array([[300.0, 200.0], [350.0, 180.0], [100.0, 50.0]]),
                                   labels=np.array([1, 1, 0])),
    "box": dict(box=np.array([180.0, 90.0, 450.0, 330.0])),
    "box and points": dict(box=np.array([180.0, 90.0, 450.0, 330.0]),
                           points=np.array([[300.0, 200.0], [200.0, 300.0]]), labels=np.array([1, 0])),
}


def assert_same(ours, theirs, case):
    our_masks, our_scores, our_low_res = ours
    their_masks, their_scores, their_low_res = theirs
    assert our_masks.shape == their_masks.shape, case
    assert our_masks.dtype == bool
    assert np.array_equal(our_masks, their_masks), f"{case}: {np.mean(our_masks != their_masks):.2e} pixels differ"
    np.testing.assert_allclose(our_scores, their_scores, atol=1e-5, rtol=0, err_msg=case)
    np.testing.assert_allclose(our_low_res, their_low_res, atol=1e-4, rtol=0, err_msg=case)


def run_cases(ours, official_predict, image):
    """Every prompt case, multimask on and off, then mask_input fed back from a previous call."""
    for case, prompt in CASES.items():
        for multimask in (True, False):
            theirs = official_predict(prompt, None, multimask)
            assert_same(ours.predict(**prompt, multimask=multimask), theirs, f"{case}, multimask={multimask}")
            assert theirs[0].any() and not theirs[0].all(), f"{case}: a trivial mask proves nothing"
    previous = ours.predict(**CASES["one point"])
    best = previous[2][np.argmax(previous[1])][None]
    prompt = dict(CASES["points with a negative"])
    theirs = official_predict(prompt, best, False)
    assert_same(ours.predict(**prompt, mask_input=best, multimask=False), theirs, "mask_input")


def test_segment_anything_parity(official_checkpoints, photo):
    from segment_anything import SamPredictor, sam_model_registry

    path = official_checkpoints["sam_vit_b"]
    model = samkit.load_model("sam_vit_b", checkpoint=path, device="cpu")
    sam = sam_model_registry["vit_b"]()
    sam.load_state_dict(torch.load(path, weights_only=True))
    official = SamPredictor(sam.eval())
    official.set_image(photo)

    def official_predict(prompt, mask_input, multimask):
        return official.predict(point_coords=prompt.get("points"), point_labels=prompt.get("labels"),
                                box=prompt.get("box"), mask_input=mask_input, multimask_output=multimask)

    ours = samkit.Predictor(model).set_image(photo)
    run_cases(ours, official_predict, photo)


def test_sam2_parity(official_checkpoints, photo):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    path = official_checkpoints["sam2.1_hiera_t"]
    model = samkit.load_model("sam2.1_hiera_t", checkpoint=path, device="cpu")
    official = SAM2ImagePredictor(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(path), device="cpu"))
    official.set_image(photo)

    def official_predict(prompt, mask_input, multimask):
        return official.predict(point_coords=prompt.get("points"), point_labels=prompt.get("labels"),
                                box=prompt.get("box"), mask_input=mask_input, multimask_output=multimask)

    ours = samkit.Predictor(model).set_image(photo)
    run_cases(ours, official_predict, photo)


def test_tinysam_v2_parity(tmp_path, photo, tinysam_v2):
    """TinySAM v2 (a small sam2 SAM2Base, from a safetensors file) through samkit and through
    SAM2ImagePredictor, on the same weights."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samkit.models import tinysam
    from samkit.models.sam2 import Sam2Adapter
    from samkit.models.tinysam2_arch import build_tinysam2

    random = tinysam_v2
    path = tmp_path / "tinysam_v2.safetensors"
    tinysam.save(random, path)
    model = samkit.load_model("tinysam", checkpoint=path, device="cpu")
    assert isinstance(model, Sam2Adapter) and model.architecture == "hiera"
    sam = build_tinysam2("hiera")
    sam.load_state_dict(random.module.state_dict())
    official = SAM2ImagePredictor(sam.eval())
    # The one size SAM2ImagePredictor does not read off its model: its backbone's feature maps,
    # written for 1024 px. TinySAM's are those of 256 px (strides 4, 8, 16).
    official._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    official.set_image(photo)

    def official_predict(prompt, mask_input, multimask):
        return official.predict(point_coords=prompt.get("points"), point_labels=prompt.get("labels"),
                                box=prompt.get("box"), mask_input=mask_input, multimask_output=multimask)

    ours = samkit.Predictor(model).set_image(photo)
    run_cases(ours, official_predict, photo)


@pytest.fixture(scope="module")
def hf_sam_folder(tmp_path_factory):
    """A transformers SamModel (SAM ViT-B config, random weights) saved with its processor."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf-sam")
    model = SamModel(SamConfig())
    with torch.no_grad():
        # transformers initialises biases and the position embedding to exact zeros; real
        # checkpoints have none, and on a CPU the all-zero padding tokens they produce take a
        # very slow path (150 s instead of 15 s per image). Small noise keeps it representative.
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    SamProcessor(SamImageProcessor()).save_pretrained(folder)
    return folder


def test_transformers_parity(hf_sam_folder, photo):
    from transformers import SamModel, SamProcessor

    model = samkit.load_model(f"hf:{hf_sam_folder}", device="cpu")
    official = SamModel.from_pretrained(hf_sam_folder).eval()
    processor = SamProcessor.from_pretrained(hf_sam_folder)
    image_inputs = processor(images=photo, return_tensors="pt")
    with torch.no_grad():
        embeddings = official.get_image_embeddings(image_inputs["pixel_values"])

    def official_predict(prompt, mask_input, multimask):
        kwargs = {}
        if "points" in prompt:
            kwargs["input_points"] = [[prompt["points"].tolist()]]
            kwargs["input_labels"] = [[prompt["labels"].tolist()]]
        if "box" in prompt:
            kwargs["input_boxes"] = [[prompt["box"].tolist()]]
        inputs = processor(images=photo, return_tensors="pt", **kwargs)
        inputs.pop("pixel_values")
        with torch.no_grad():
            out = official(image_embeddings=embeddings, multimask_output=multimask,
                           input_points=inputs.get("input_points"), input_labels=inputs.get("input_labels"),
                           input_boxes=inputs.get("input_boxes"),
                           input_masks=None if mask_input is None else torch.as_tensor(mask_input)[None])
        masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        return masks[0][0].numpy(), out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()

    ours = samkit.Predictor(model).set_image(photo)
    run_cases(ours, official_predict, photo)


def test_transformers_sam2_parity(tmp_path, photo):
    """`hf:` also takes transformers' Sam2Model: same masks as its own forward + post-processing."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(0)
    model = Sam2Model(Sam2Config())
    with torch.no_grad():
        for parameter in model.parameters():  # see hf_sam_folder: no all-zero tensors
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    model.save_pretrained(tmp_path)
    processor = Sam2Processor(Sam2ImageProcessor())
    processor.save_pretrained(tmp_path)
    ours = samkit.Predictor(samkit.load_model(f"hf:{tmp_path}", device="cpu")).set_image(photo)
    official = Sam2Model.from_pretrained(tmp_path).eval()
    for case in ("one point", "box", "points with a negative"):
        prompt, kwargs = CASES[case], {}
        if "points" in prompt:
            kwargs = dict(input_points=[[prompt["points"].tolist()]], input_labels=[[prompt["labels"].tolist()]])
        else:
            kwargs = dict(input_boxes=[[prompt["box"].tolist()]])
        inputs = processor(images=photo, return_tensors="pt", **kwargs)
        with torch.no_grad():
            out = official(**inputs, multimask_output=True)
        masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0].numpy()
        assert_same(ours.predict(**prompt), (masks, out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()), case)

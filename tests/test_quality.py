"""FID and CLIP score in `duo-unlearn eval`: stand-in feature networks with known answers, a tiny random CLIP model
saved to a folder (no download), the committed test-bed feature network, and the one-line errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.detectors.colour import read_image
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.evaluate import EvalConfig, evaluate, summary_table
from duo_unlearn.trainer.evaluate.quality import Quality, _check_inception_file, clip_cosines, load_clip
from duo_unlearn.trainer.testbed import features
from duo_unlearn.trainer.testbed.shapes import make_dataset, random_spec, render

PROMPTS = ["a blue circle on a white background", "a green square on a black background"]


def _shapes(colour, n, seed, background=None):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(render(random_spec(rng, colour=colour, background=background))) for _ in range(n)]


class _MeanColours(torch.nn.Module):
    """A stand-in feature network: each channel's mean over a 2×2 grid (12 numbers), no weights to download."""
    num_features = 12

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)


def _stand_in_quality():
    from torchmetrics.image.fid import FrechetInceptionDistance

    return Quality(fid_features="inception", fid=FrechetInceptionDistance(feature=_MeanColours(),
                                                                          reset_real_features=False))


def test_fid_stand_in_zero_for_identical_sets_larger_for_different():
    q = _stand_in_quality()
    blue = _shapes("blue", 32, seed=0, background="white")  # one background: the colour is what differs
    prompts = ["p"] * 32
    q.set_reference(blue, prompts)  # no folder, not the test bed: the "base" images are the reference
    assert q.reference["kind"] == "base model" and q.reference["n"] == 32
    same = q.measure([im.copy() for im in blue], prompts)["fid"]["value"]
    similar = q.measure(_shapes("blue", 32, seed=1, background="white"), prompts)["fid"]["value"]
    other = q.measure(_shapes("red", 32, seed=2, background="white"), prompts)["fid"]["value"]
    assert same == pytest.approx(0.0, abs=1e-4)
    assert 0 < similar < other and other > 10 * similar, (same, similar, other)
    again = q.measure(blue, prompts)["fid"]["value"]  # measuring others left the reference statistics alone
    assert again == pytest.approx(0.0, abs=1e-4)


def test_fid_from_no_more_images_than_features_carries_a_caveat():
    q = _stand_in_quality()  # 12 features
    q.set_reference(_shapes("blue", 32, seed=0, background="white"), ["p"] * 32)
    few = q.measure(_shapes("blue", 12, seed=1, background="white"), ["p"] * 12)["fid"]
    assert "12 images per method against 12 features" in few["caveat"] and "mostly noise" in few["caveat"]
    enough = q.measure(_shapes("blue", 13, seed=1, background="white"), ["p"] * 13)["fid"]
    assert "caveat" not in enough and enough["n"] == 13


# -- the test bed's feature network --

def test_committed_testbed_feature_network_reads_fresh_renders():
    net = features.load_net()  # the committed file: fails if it is missing or not this architecture
    assert features.WEIGHTS.stat().st_size < 1_000_000
    images, _, specs = make_dataset(300, seed=424242)  # neither its training nor its held-out seed
    acc = features.accuracy(net, images, specs)
    assert min(acc.values()) >= 0.97, acc  # random weights would score about 1/3 and 1/6
    record = json.loads(features.FIGURES.read_text())
    held = record["figures"]["held_out_renders"]
    assert min(held[h] for h in features.HEADS) >= 0.97 and record["parameters"] == sum(
        p.numel() for p in net.parameters())


def test_testbed_fid_separates_colours_and_labels_itself():
    q = Quality(fid_features="testbed")
    flat = [p for p in PROMPTS for _ in range(16)]
    q.set_reference([Image.new("RGB", (32, 32))] * 2, flat, seed=0)  # renders, not the "base" images given
    assert q.reference["kind"] == "test-bed renders" and q.reference["n"] == 2 * features.RENDERS_PER_PROMPT
    near = q.measure(features.reference_renders(PROMPTS, 16, seed=5), flat)["fid"]
    recoloured = [p.replace("blue", "red").replace("green", "purple") for p in PROMPTS]
    far = q.measure(features.reference_renders(recoloured, 16, seed=5), flat)["fid"]
    assert far["value"] > 5 * near["value"], (near, far)
    assert near["label"] == features.LABEL and "not comparable with published FID" in near["label"]


def test_reference_renders_follow_the_prompt():
    assert features.parse_prompt("a crimson square on a black background") == {
        "colour": "red", "shape": "square", "background": "black"}
    assert features.parse_prompt("a triangle") == {"shape": "triangle"}
    assert features.parse_prompt("a photo of a cat") is None
    for im in features.reference_renders(["a crimson square on a black background"], 8, seed=0):
        r = read_image(im)
        assert (r.colour, r.shape, r.background) == ("red", "square", "black")


# -- CLIP score from a local folder --

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIPModel with its processor, saved as a user's local copy would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import build_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = build_tokenizer(folder / "_tok", vocabulary_words())
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16)
    CLIPModel(config).save_pretrained(str(folder))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def test_a_clip_folder_of_mismatched_or_missing_parts_is_refused(tiny_clip, tmp_path):
    """A score from randomly started weights (a text-encoder-only folder) or from images cut to another size than
    the model reads is noise or a crash after the whole evaluation: both are said when the folder is loaded."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor, CLIPProcessor

    half = tmp_path / "half"
    shutil.copytree(tiny_clip, half)
    weights = load_file(str(half / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")}, str(half / "model.safetensors"))
    with pytest.raises(UserError, match="is not a whole CLIP model: .* weights are missing .*vision_model"):
        load_clip(str(half))
    other = tmp_path / "other"
    shutil.copytree(tiny_clip, other)
    tokenizer = CLIPProcessor.from_pretrained(str(tiny_clip)).tokenizer
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
                  tokenizer=tokenizer).save_pretrained(str(other))
    with pytest.raises(UserError, match="its image processor makes 224 px images and its model reads 32 px"):
        load_clip(str(other))


def test_clip_cosines_match_clip_model_forward(tiny_clip):
    model, processor = load_clip(str(tiny_clip))
    images = _shapes("blue", 3, seed=0) + _shapes("red", 2, seed=1)
    prompts = ["a blue circle", "a red square on a white background", "", "a red triangle",
               "a red circle on a black background " * 4]  # longer than the 16-token window: cut, not an error
    got = clip_cosines(model, processor, images, prompts, batch=2)
    for im, prompt, cos in zip(images, prompts, got):  # one pair at a time through CLIPModel.forward
        text = processor.tokenizer([prompt], truncation=True, max_length=16, return_tensors="pt")
        pixels = processor.image_processor(images=[im], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        assert cos == pytest.approx(float(out.logits_per_image[0, 0] / model.logit_scale.exp()), abs=1e-5)
    assert len(set(round(c, 6) for c in got)) == len(got)  # each image against its own prompt


def test_evaluate_reports_clip_score_and_testbed_fid(tiny_model, tmp_path, tiny_clip):
    out = tmp_path / "report"
    cfg = EvalConfig(model=str(tiny_model), negative_prompt="", attacks=("direct",), images_per_prompt=2,
                     max_prompts=2, sample_steps=2, lpips_backbone="random", out=str(out),
                     fid_features="testbed", clip_model=str(tiny_clip))
    result = evaluate(cfg)
    saved = json.loads((out / "report.json").read_text())
    q = saved["results"]["base"]["quality"]
    assert q["clip_score"]["n"] == 4 == len(q["clip_score"]["per_image"])  # 2 prompts x 2 images
    assert q["clip_score"]["value"] == pytest.approx(np.mean(q["clip_score"]["per_image"]), abs=1e-3)
    assert q["fid"]["n"] == 4 and q["fid"]["value"] > 0  # the tiny model's 16-px squares are not the renders
    assert q["fid"]["label"] == features.LABEL and q["fid"]["reference"] == "test-bed renders"
    assert saved["quality"]["fid"]["reference"]["n"] == 2 * features.RENDERS_PER_PROMPT
    assert saved["quality"]["clip_score"]["model"] == str(tiny_clip)
    table = summary_table(result)
    assert "test-bed FID |" in table.splitlines()[0] and "CLIP score |" in table.splitlines()[0]
    assert f"{q['fid']['value']:.2f}" in table.splitlines()[2]


def test_evaluate_without_quality_flags_has_no_quality(tiny_model, tmp_path):
    result = evaluate(EvalConfig(model=str(tiny_model), negative_prompt="", attacks=("direct",),
                                 images_per_prompt=1, max_prompts=1, sample_steps=1, lpips_backbone="random",
                                 out=str(tmp_path / "r")))
    assert "quality" not in result and "quality" not in result["results"]["base"]
    assert "FID" not in summary_table(result) and "CLIP" not in summary_table(result)


# -- the command line --

def _eval(capsys, tiny_model, tmp_path, *extra):
    code = main(["eval", "--model", str(tiny_model), "--out", str(tmp_path / "r"), "--lpips-backbone", "random",
                 "--attacks", "direct", "--negative-prompt", "", "--images-per-prompt", "2", "--max-prompts", "2",
                 "--sample-steps", "2", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_cli_fid_reference_folder(capsys, tmp_path, tiny_model):
    ref = tmp_path / "coco"
    ref.mkdir()
    for i, im in enumerate(_shapes("blue", 5, seed=3)):
        im.resize((40, 24)).save(ref / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (ref / "captions.txt").write_text("not an image: ignored\n")
    code, out, err = _eval(capsys, tiny_model, tmp_path, "--fid-features", "testbed", "--fid-reference", str(ref))
    assert code == 0, err
    assert "test-bed FID |" in out.splitlines()[0]
    # 2 prompts x 2 images against the test-bed network's 32 features: said once, and kept in the report
    assert (out + err).count(f"warning: FID from 4 images per method against {features.FEATURES} features") == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["quality"]["fid"]["reference"]["kind"] == "folder"
    assert report["quality"]["fid"]["reference"]["n"] == 5
    assert report["results"]["base"]["quality"]["fid"]["reference"] == "folder"
    assert "too few to estimate the feature covariance" in report["results"]["base"]["quality"]["fid"]["caveat"]


@pytest.mark.parametrize("case, expect", [
    ("missing", "FID reference folder not found"), ("file", "is a file"), ("empty", "holds no images"),
    ("no_images", "holds no images"), ("broken", "is not a readable image"), ("one", "at least 2 reference"),
    ("no_features", "give --fid-features too"), ("bad_features", "fid_features must be one of"),
    ("clip_hub_name", "--clip-model must be a local folder"), ("clip_not_clip", "could not load a CLIP model"),
    ("inception", "Inception v3"), ("inception_missing", "Inception weights file not found"),
])
def test_eval_cli_quality_bad_input_one_line_exit_2(case, expect, capsys, tmp_path, tiny_model, monkeypatch):
    ref = tmp_path / "ref"
    args = ["--fid-features", "testbed", "--fid-reference", str(ref)]
    if case == "file":
        ref.write_text("x")
    elif case in ("empty", "no_images", "broken", "one"):
        ref.mkdir()
        if case == "no_images":
            (ref / "notes.txt").write_text("x")
        elif case == "broken":
            _shapes("red", 1, 0)[0].save(ref / "a.png")
            (ref / "b.jpg").write_bytes(b"not a jpeg at all")
        elif case == "one":
            _shapes("red", 1, 0)[0].save(ref / "a.png")
    elif case == "no_features":
        args = ["--fid-reference", str(ref)]
    elif case == "bad_features":
        args = ["--fid-features", "vgg"]
    elif case == "clip_hub_name":
        args = ["--clip-model", "openai/clip-vit-large-patch14"]
    elif case == "clip_not_clip":
        (tmp_path / "clip").mkdir()
        (tmp_path / "clip" / "config.json").write_text("{}")
        args = ["--clip-model", str(tmp_path / "clip")]
    elif case == "inception":  # torch-fidelity absent, or present and offline with nothing in TORCH_HOME
        import urllib.error

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
        def offline(*args, **kwargs):
            raise urllib.error.URLError("offline")

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
        try:
            import torch_fidelity.feature_extractor_inceptionv3 as inception
        except ImportError:
            pass
        else:
            monkeypatch.setattr(inception, "load_state_dict_from_url", offline)
        args = ["--fid-features", "inception"]
    elif case == "inception_missing":  # named before torch-fidelity (absent here) or any download is looked for
        args = ["--fid-features", "inception", "--fid-inception-weights", str(tmp_path / "none.pth")]
    code, _, err = _eval(capsys, tiny_model, tmp_path, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("duo-unlearn: error:") and expect in lines[0], err
    assert not (tmp_path / "r").exists()  # nothing written before the input is known good


def test_inception_weights_file_must_be_a_plain_state_dict(tmp_path):
    text = tmp_path / "w.pth"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a plain Inception v3 state dict"):
        _check_inception_file(str(text))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not torch-fidelity's Inception v3 weights"):
        _check_inception_file(str(other))
    with pytest.raises(UserError, match="not found"):
        _check_inception_file(str(tmp_path / "none.pth"))


@pytest.mark.parametrize("features, kind, title", [
    ("testbed", "test-bed renders", "test-bed FID"), ("inception", "base model", "FID vs base"),
    ("inception", "folder", "FID"),
])
def test_summary_table_names_what_the_fid_compares_with(features, kind, title):
    result = {"results": {"base": {"attacks": {}, "preservation": {"one_minus_lpips": 1.0},
                                   "quality": {"fid": {"value": 12.345}}}},
              "quality": {"fid": {"features": features, "reference": {"kind": kind}}}}
    head, _, row = summary_table(result).splitlines()
    assert head.endswith(f"| 1 − LPIPS | {title} |") and row == "| base | 1.000 | 12.35 |"


def test_model_card_quotes_the_feature_network_json():
    """The card's feature-network figures are features.json's, so a retraining cannot leave the card stale."""
    card = (features.WEIGHTS.parent / "MODEL_CARD.md").read_text()
    section = card[card.index("# The test bed's feature network"):]
    record = json.loads(features.FIGURES.read_text())
    f, c = record["figures"], record["config"]
    held = f["held_out_renders"]
    quoted = [f"{record['parameters']:,} parameters", f"{record['weights_bytes'] // 1000} KB",
              f"{c['images']:,} renders", f"{c['steps']:,} steps of batch {c['batch']}", f"AdamW {c['lr']:g}",
              f"{record['seconds_train']:.0f} s of training", f"{record['seconds_total']:.0f} s with the checks",
              f"held-out renders ({held['n']:,}, seed 2000) | {held['colour']:.3f} | {held['shape']:.3f} | "
              f"{held['background']:.3f} |",
              f"the base model {f['fid_calibration']['base_vs_renders']:.1f}",
              f"(the noise floor at 64 images) {f['fid_calibration']['other_renders_vs_renders']:.1f}",
              f"against its own images {f['fid_calibration']['base_vs_itself']:.1f}"]
    gen = f["generated"]
    for key in ("agrees_with_pixel_classifier", "agrees_with_prompt", "pixel_classifier_agrees_with_prompt"):
        quoted.append(" | ".join(f"{gen[h][key]:.3f}" for h in features.HEADS) + " |")
    for text in quoted:
        assert text in section, text

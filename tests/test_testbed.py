"""The bundled test bed: its data, tokenizer and classifier, and the committed model's behaviour (small samples,
margins below the model card's figures so the tests are stable but a broken model fails)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from duo_unlearn.trainer.detectors.colour import ColourDetector, read_image
from duo_unlearn.trainer.testbed import TESTBED_DIR
from duo_unlearn.trainer.testbed.shapes import COLOURS, make_dataset, vocabulary_words
from duo_unlearn.trainer.testbed.vocabulary import MAX_LENGTH, build_tokenizer


def test_classifier_reads_the_generators_images_exactly():
    images, prompts, specs = make_dataset(600, seed=11)
    readings = [read_image(im) for im in images]
    assert all(r.colour == s.colour for r, s in zip(readings, specs))
    assert all(r.background == s.background for r, s in zip(readings, specs))
    assert np.mean([r.shape == s.shape for r, s in zip(readings, specs)]) >= 0.99
    red = ColourDetector("red")
    scores = red.scores([im for im in images[:60]])
    assert all((s >= 0.5) == (sp.colour == "red") for s, sp in zip(scores, specs[:60]))


def test_captions_cover_forms_synonyms_and_empty():
    _, prompts, specs = make_dataset(2000, seed=3)
    assert "" in prompts
    assert any(p.startswith("a crimson") for p in prompts) and any(p.startswith("a scarlet") for p in prompts)
    assert any(p.endswith("background") and len(p.split()) == 6 for p in prompts)  # "a red circle on a X background"
    assert any(len(p.split()) == 3 for p in prompts)  # "a red circle"
    for p, s in zip(prompts, specs):  # a caption never names a colour other than the image's
        named = [w for w in p.split() if w in COLOURS or w in ("crimson", "scarlet")]
        assert all(w == s.colour or (s.colour == "red" and w in ("crimson", "scarlet")) for w in named)


def test_tokenizer_keeps_each_word_whole_and_loads_from_pretrained(tmp_path):
    from transformers import CLIPTokenizer

    build_tokenizer(tmp_path / "tok", vocabulary_words())
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tok) > 100  # not the silently empty vocabulary of CLIPTokenizer(vocab_file=...)
    for word in vocabulary_words():
        assert tok.tokenize(word) == [word + "</w>"], word
    ids = tok("a crimson triangle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH and ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id
    assert len(tok.tokenize("reddish")) > 1  # unknown words fall back to pieces, not to nothing


def test_bundled_model_is_small_and_loads_offline():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    assert (TESTBED_DIR / "model_index.json").exists()
    weights = sum(p.stat().st_size for p in TESTBED_DIR.rglob("*.safetensors"))
    assert weights < 10e6
    assert not list(TESTBED_DIR.rglob("*.bin"))
    pipe = StableDiffusionPipeline.from_pretrained(str(TESTBED_DIR), local_files_only=True)
    assert pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 2
    assert len(CLIPTokenizer.from_pretrained(str(TESTBED_DIR / "tokenizer"))) == len(pipe.tokenizer) > 100
    assert any("attn2" in n for n, _ in pipe.unet.down_blocks[0].named_modules())  # cross-attention at 16x16


@pytest.fixture(scope="module")
def testbed_pipe():
    from duo_unlearn.trainer.models import load_model

    return load_model("testbed").pipe


def test_the_sd1_preset_adapts_each_layer_it_names_on_the_bundled_model(testbed_pipe):
    """testbed-red on SD 1.x names its layers one by one (the ResNet convolutions of the 8 × 8 middle block and first
    up block), as does the efficacy table's ten-convolution row (those and the encoder's 8 × 8 block): each name must
    be one convolution of the bundled UNet, or a renamed block would train on fewer layers than the recipe says."""
    import torch

    from duo_unlearn.trainer.presets import get_preset

    preset = get_preset("testbed-red").for_family("sd1").target_modules
    ten = benchmark("efficacy_testbed").CONV_8X8
    assert len(preset) == 8 and len(ten) == 10 and set(preset) < set(ten)
    modules = dict(testbed_pipe.unet.named_modules())
    found = {t: [n for n in modules if n == t or n.endswith("." + t)] for t in ten}
    assert all(len(names) == 1 for names in found.values()), found
    convs = [modules[names[0]] for names in found.values()]
    assert all(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in convs)


@pytest.mark.slow
def test_bundled_model_follows_colour_and_shape(testbed_pipe):
    from duo_unlearn.trainer.testbed.measure import prompt_following

    figures = prompt_following(testbed_pipe, per_colour=6, steps=25, guidance=5.0,
                               colour_words={"crimson": "red"}, seed=5)
    acc = figures["colour_accuracy"]
    assert min(acc[c] for c in COLOURS) >= 4 / 6, acc
    assert acc["crimson"] >= 4 / 6, acc
    assert figures["shape_accuracy"] >= 0.6, figures["shape_accuracy"]


@pytest.mark.slow
def test_empty_prompt_mixes_colours(testbed_pipe):
    from duo_unlearn.trainer.testbed.measure import empty_prompt_colours

    counts = empty_prompt_colours(testbed_pipe, n=24, seed=2)
    assert len([c for c in counts if c in COLOURS]) >= 4, counts


@pytest.mark.slow
def test_sdedit_recolours_red_shapes_in_place(testbed_pipe):
    from duo_unlearn.trainer.testbed.figures import sdedit_figures

    figures = sdedit_figures(testbed_pipe, n=8, seed=3)
    assert figures["sources_red"] >= 6
    assert figures["colour_changed"] >= 0.75 and figures["mask_iou_mean"] >= 0.5, figures


def test_model_card_figures_come_from_committed_data():
    """Every figure of the card's table is figures.json rendered by figures.card_table; the training paragraph's
    figures are training_log.json's and the VAE config's."""
    from duo_unlearn.trainer.testbed.figures import END, START, card_table

    here = Path(__file__).resolve().parents[1] / "trainer" / "testbed"  # the repository's, as committed
    card = (here / "MODEL_CARD.md").read_text()
    figures = json.loads((here / "figures.json").read_text())
    assert card[card.index(START) + len(START):card.index(END)].strip() == card_table(figures)
    log = json.loads((TESTBED_DIR / "training_log.json").read_text())
    c, vae = log["config"], log["vae_check"]
    scale = json.loads((TESTBED_DIR / "vae" / "config.json").read_text())["scaling_factor"]
    for figure in (f"{c['vae_steps']:,} steps, batch {c['vae_batch']}", f"{c['unet_steps']:,} steps, batch "
                   f"{c['unet_batch']}", f"{vae['colour']:.0%} the right colour", f"{vae['shape']:.0%} the right shape",
                   f"(MSE {vae['mse']:.4f})", f"scaling_factor {scale:.3f}", f"EMA {c['ema_decay']}",
                   f"{log['seconds_total']:,.0f} s ({log['seconds_total'] / 60:.0f} min)",
                   f"{c['images']:,} images, seed {c['seed']}"):
        assert figure.replace("%", " %") in card, figure
    import math

    from safetensors import safe_open

    for part, label in (("vae", "0.17 M params"), ("text_encoder", "0.11 M |"), ("unet", "1.08 M |")):
        with safe_open(str(next((TESTBED_DIR / part).glob("*.safetensors"))), "pt") as f:
            n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        assert f"{n / 1e6:.2f} M" in label and label in card, (part, n)
    tokens = len(json.loads((TESTBED_DIR / "tokenizer" / "vocab.json").read_text()))
    assert f"({tokens} tokens" in card
    assert f"Weights: {figures['weights_mb']:.1f} MB" in card


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(stem: str):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(stem, BENCHMARKS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_come_from_committed_json():
    """benchmarks/RESULTS.md: each efficacy section (SD 1.x and SDXL test beds) and the β-scale section are their
    committed JSON rendered by their scripts (and so is the fp32-vs-bf16 section), and the first-run table is the first run's record rendered by the
    same table()."""
    bench = BENCHMARKS
    mod = benchmark("efficacy_testbed")
    text = (bench / "RESULTS.md").read_text()

    def section(name):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        return text[text.index(start) + len(start):text.index(end)].strip()

    for stem in ("efficacy_testbed", "efficacy_testbed_xl", "efficacy_testbed_sd3"):
        if stem != "efficacy_testbed" and not (bench / f"{stem}.json").exists():
            continue  # a family's rows are added once they are measured
        assert section(stem) == mod.markdown(json.loads((bench / f"{stem}.json").read_text())).strip(), stem
    beta = benchmark("beta_scale_testbed")
    assert section("beta_scale") == beta.section(json.loads((bench / "beta_scale_testbed.json").read_text())).strip()
    precision = benchmark("precision_testbed")
    record = json.loads((bench / "precision_testbed.json").read_text())
    assert section("precision_testbed") == precision.section(record).strip()
    first = json.loads((bench / "efficacy_testbed_first_run.json").read_text())
    assert mod.table(first["report"], first["close_concept_and_agreement"], first["train_seconds"]) in text


def test_the_rows_of_earlier_recipes_keep_the_lambda_they_were_measured_with():
    """The SD 1.x preset's λ moved from 1e4 to 4e4; a row standing for an earlier recipe that inherited the preset's
    λ would silently retrain as a new recipe under its old name. Each row's planned training says which λ it uses."""
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    mod = benchmark("efficacy_testbed")
    lam = {}
    for name, _, overrides in mod.variants(["500"], "testbed"):
        cfg = UnlearnConfig(preset="testbed-red", model="testbed", out="row.safetensors", preview=False, **overrides)
        lam[name] = plan(cfg)[1][0].train.preservation_weight
    now = get_preset("testbed-red").for_family("sd1").lam
    assert lam["duo_preset"] == now != 1e4
    assert lam["duo_preset_lam0"] == 0.0
    record = json.loads((BENCHMARKS / "efficacy_testbed.json").read_text())
    measured = {m["name"]: m["facts"]["lambda"] for m in record["report"]["methods"]
                if m["kind"] == "adapter" and m["name"].startswith("duo")}
    earlier = [n for n, v in measured.items() if v == 1e4]
    assert len(earlier) >= 13 and {n: lam[n] for n in measured} == measured


def test_each_family_table_plans_the_rows_its_reproduce_command_names(tmp_path):
    """The SD3 table's reproduce command names five rows; planning every row first refused on a row made for another
    family's preset (24 concept directions need a retain set, which SD3's preset has none of). Only the rows asked for
    are planned, and each saved table's rows plan on its own family."""
    from duo_unlearn.trainer.errors import UserError

    mod = benchmark("efficacy_testbed")
    for stem, model in (("efficacy_testbed_xl", "testbed-xl"), ("efficacy_testbed_sd3", "testbed-sd3")):
        record = json.loads((BENCHMARKS / f"{stem}.json").read_text())
        rows = set(record["args"]["rows"].split(","))
        planned = mod.plan_rows(tmp_path, ["500"], model, names=rows)
        assert set(planned) == rows
        assert all(Path(ucfg.out).parent == tmp_path for _, ucfg, _ in planned.values())
    with pytest.raises(UserError, match="needs a retain set"):
        mod.plan_rows(tmp_path, ["500"], "testbed-sd3", names={"duo_preset_24"})


def test_missed_targets_are_counted_in_images():
    """A verdict below a target says by how many images: 30 of 36 orange where the base model reads 32 is 0.94 of
    base, one image short of 0.95; a met target says nothing more."""
    mod = benchmark("efficacy_testbed")
    attack = {"dsr": 22 / 24, "n": 24}
    result = {"results": {"duo_x": {"attacks": {"direct": attack, "prompts": {"dsr": 1.0, "n": 24}},
                                    "preservation": {"one_minus_lpips": 0.98}}}}
    extra = {"base": {"orange_accuracy": 32 / 36, "shape_accuracy": 150 / 180},
             "duo_x": {"orange_accuracy": 30 / 36, "orange_vs_base": 30 / 32, "orange_n": 36, "others_n": 180,
                       "background_kept": 172 / 180, "shape_accuracy": 140 / 180,
                       "shape_accuracy_vs_base": 140 / 150, "concept_n": 36,
                       "concept_background_kept": 32 / 36, "concept_shape_kept": 35 / 36,
                       "background_right_kept": 135 / 143, "background_right_n": 143}}
    line = mod.verdicts(result, extra)[0]
    assert "min DSR over 2 attacks 0.917 (< 0.95: 22 of 24 images erased, 23 would meet it)" in line
    assert "orange kept (÷ base) 0.938 (< 0.95: 30 of 36 read orange (the base model: 32), 31 would meet it)" in line
    assert "background kept 0.956 (≥ 0.95);" in line
    # 135 of the 143 backgrounds the base model drew as asked still drawn so: one image short of 136
    assert ("background kept where drawn as asked 0.944 (< 0.95: 135 of 143 backgrounds drawn as asked "
            "kept, 136 would meet it)") in line
    assert "shape accuracy ÷ base 0.933 (< 0.95: 140 of 180 shapes read right (the base model: 150), 143 would" in line
    # the red prompts' own pictures: 32 of 36 backgrounds as the base model drew them is short, 35 of 36 shapes is not
    assert "red prompts: background kept 0.889 (< 0.95: 32 of 36 backgrounds kept, 35 would meet it)" in line
    assert line.endswith("red prompts: shape kept 0.972 (≥ 0.95)")
    extra["duo_x"]["concept_erased"] = 32 / 36  # the colour reading's red prompts, all nine of them
    line = mod.verdicts(result, extra)[0]
    assert line.endswith("red prompts: shape kept 0.972 (≥ 0.95); red prompts: red erased 0.889 (< 0.95: 32 of 36 "
                         "red images erased, 35 would meet it)")


def test_the_red_prompts_columns_appear_only_in_records_that_read_them():
    mod = benchmark("efficacy_testbed")
    attack = {"dsr": 1.0, "n": 24}
    result = {"results": {"duo_x": {"attacks": {"direct": attack}, "preservation": {"one_minus_lpips": 0.98}}},
              "methods": [{"name": "duo_x", "facts": {}}]}
    old = {"duo_x": {"orange_vs_base": 1.0, "background_kept": 0.9}}
    assert "red prompts" not in mod.table(result, old, {})
    new = {"duo_x": old["duo_x"] | {"concept_background_kept": 0.5, "concept_shape_kept": 0.25, "concept_n": 36}}
    head, _, row = mod.table(result, new, {}).splitlines()
    assert head.split(" | ")[-4:-2] == ["red prompts: background kept", "red prompts: shape kept"]
    assert row.split(" | ")[-4:-2] == ["0.500", "0.250"]
    erased = {"duo_x": new["duo_x"] | {"concept_erased": 0.875, "shape_accuracy_vs_base": 0.96}}
    head, _, row = mod.table(result, erased, {}).splitlines()
    assert head.split(" | ")[-5:-2] == ["red prompts: background kept", "red prompts: shape kept",
                                        "red prompts: red erased"]
    assert row.split(" | ")[-3] == "0.875"  # every red prompt, beside the attacks' DSR
    columns, cells = head.split(" | "), row.split(" | ")
    assert cells[columns.index("shape accuracy ÷ base")] == "0.960"  # the shape target's own reading


def test_backgrounds_kept_where_drawn_as_asked_count_only_the_errors_an_adapter_makes():
    """The base model draws gray where black is asked in the first image; an adapter that draws it black mends it
    (a change against the base model, not an error) and one that turns the second image's black gray makes an
    error. "Kept" counts both changes, the second reading only the error, out of the base model's right ones."""
    from types import SimpleNamespace

    def Reading(background, colour, shape):  # what compare_readings reads of the colour classifier's Reading
        return SimpleNamespace(background=background, colour=colour, shape=shape)

    mod = benchmark("efficacy_testbed")
    truth = [("blue", "circle", "black"), ("blue", "square", "black"), ("green", "circle", "gray"),
             ("green", "triangle", "white")]
    base_bg, now_bg = ["gray", "black", "gray", "white"], ["black", "gray", "gray", "white"]
    shapes = [t[1] for t in truth]
    orange = [Reading("white", "orange", "circle")] * 2
    concept = [Reading("white", "red", "circle")]
    base = {"others": [Reading(b, t[0], sh) for b, t, sh in zip(base_bg, truth, shapes)], "orange": orange,
            "unrelated": concept, "concept": concept}
    now = {"others": [Reading(b, t[0], sh) for b, t, sh in zip(now_bg, truth, shapes)],
           "orange": [Reading("white", "orange", "circle"), Reading("white", "yellow", "circle")],
           "unrelated": concept, "concept": [Reading("white", "blue", "circle")]}
    r = mod.compare_readings(now, base, truth)
    assert r["background_kept"] == 0.5  # two of four changed
    assert r["background_right_n"] == 3 and r["background_right_kept"] == pytest.approx(2 / 3)
    assert r["background_mended"] == 1 and r["background_as_asked"] == 0.75
    assert r["orange_vs_base"] == 0.5 and r["concept_erased"] == 1.0 and r["shape_accuracy_vs_base"] == 1.0
    same = mod.compare_readings(base, base, truth)
    assert same["background_kept"] == same["background_right_kept"] == 1.0 and same["background_mended"] == 0
    with pytest.raises(ValueError):  # readings and prompts out of step are refused, not silently cut
        mod.compare_readings(now | {"others": now["others"][:3]}, base, truth)


def test_the_reference_row_and_the_background_reading_have_their_columns():
    mod = benchmark("efficacy_testbed")
    attack = {"dsr": 1.0, "n": 24}
    result = {"results": {name: {"attacks": {"direct": attack}, "preservation": {"one_minus_lpips": 0.98}}
                          for name in ("duo_x", "oracle_relabelled")},
              "methods": [{"name": "duo_x", "facts": {}},
                          {"name": "oracle_relabelled", "facts": {"oracle": "relabelled, full rank", "family": "sd1"}}]}
    extra = {name: {"orange_vs_base": 1.0, "background_kept": 0.9, "background_right_kept": 0.95,
                    "background_right_n": 143} for name in ("duo_x", "oracle_relabelled")}
    head, _, duo, reference = mod.table(result, extra, {}).splitlines()
    columns = head.split(" | ")
    assert columns.index("background kept where drawn as asked") == columns.index("background kept") + 1
    assert "| reference: test bed fine-tuned, relabelled, full rank |" in reference
    lines = mod.verdicts(result, extra)
    assert len(lines) == 1 and lines[0].startswith("- duo_x:")  # a reference is not held to the targets


def test_the_recipe_column_says_which_directions_setting_a_row_used():
    mod = benchmark("efficacy_testbed")
    facts = {"beta": 10.0, "lambda": 1e4, "lr": 1e-3, "steps": 300, "retain_images": 135, "close_concepts": ["orange"],
             "close_weight": 6.0, "concept_directions_share": 0.3643}
    said = [mod.recipe(facts | {"concept_directions": n}) for n in (24, 0.5, "auto")]
    assert "the LoRA on the concept's 24 input directions per layer, measured against 135 retain images" in said[0]
    assert "the LoRA on the 50% of each layer's input directions most particular to the concept, measured" in said[1]
    assert "whose μ is above their layer's mean (36% of the inputs), measured against 135" in said[2]
    assert all("close concept orange ×6" in s for s in said)
    assert "ResNet convolutions" not in said[0]  # self-attention, the default, is not spelt out
    conv = mod.recipe(facts | {"target_modules": list(mod.CONV_8X8)})
    both = mod.recipe(facts | {"target_modules": list(mod.CONV_8X8 + mod.SELF_ATTENTION)})
    assert conv.endswith("300 steps, the LoRA on 10 ResNet convolutions")
    assert both.endswith("300 steps, the LoRA on 10 ResNet convolutions and 4 more layers")


@pytest.mark.slow
def test_testbed_red_pairs_are_gated_and_keep_the_layout(tmp_path):
    from PIL import Image

    from duo_unlearn.trainer.pair_dataset import read_pairs
    from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.testbed.figures import mask_iou

    preset = get_preset("testbed-red")
    concept = preset.concepts[0]
    stats = generate_pairs(PairConfig(
        out=str(tmp_path / "p"), model="testbed", unsafe_prompts=concept.unsafe_prompts,
        safe_prompts=concept.safe_prompts, num_pairs=8, strength=preset.strength, guidance=preset.guidance,
        sample_steps=preset.sample_steps, detector=preset.detector))
    records = read_pairs(tmp_path / "p")
    assert stats.made == len(records) >= 6
    ious, named = [], []
    for r in records:
        u = read_image(Image.open(tmp_path / "p" / r.unsafe))
        s = read_image(Image.open(tmp_path / "p" / r.safe))
        ious.append(mask_iou(u.mask, s.mask))
        named.append(s.colour == next(w for w in r.safe_prompt.split() if w in COLOURS))
    # The gate (red in, not red out) is tested with fake detectors in test_pairs.py; here: SDEdit keeps the layout
    # and the twin takes the colour its safe prompt names, which the gate does not ask for.
    assert np.median(ious) >= 0.4, ious
    assert np.mean(named) >= 0.75, named


def test_ema_keeps_the_warm_up_average():
    """The trainer's EMA (diffusers' EMAModel) against a hand computation: the first update copies the weights,
    update n then keeps (n) / (n + 9) of the average (the warm-up), capped at the configured decay."""
    import torch

    from duo_unlearn.trainer.testbed.train import Ema

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    ema = Ema([a, b], decay=0.2)
    expected = None
    for n in range(1, 5):
        with torch.no_grad():
            for p in [*a.parameters(), *b.parameters()]:
                p.add_(torch.randn_like(p))
        now = torch.cat([p.detach().flatten().clone() for p in [*a.parameters(), *b.parameters()]])
        decay = 0.0 if n == 1 else min(0.2, n / (n + 9))
        expected = now if expected is None else decay * expected + (1 - decay) * now
        ema.step()
    got = torch.cat([p.flatten() for m in ema.current() for p in m.parameters()])
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, now)  # an average, not the last weights


def test_testbed_trainer_runs_two_steps(tmp_path):
    from diffusers import StableDiffusionPipeline

    from duo_unlearn.trainer.testbed.train import TestbedTrainConfig, train_testbed

    cfg = TestbedTrainConfig(out=str(tmp_path / "m"), images=32, vae_steps=2, vae_batch=4, unet_steps=2,
                             unet_batch=4, warmup=1, eval_every=0, log_every=1)
    out = train_testbed(cfg, log=lambda _: None)
    log = json.loads((out / "training_log.json").read_text())
    assert log["config"]["unet_steps"] == 2 and not (tmp_path / "m.partial").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.unet.config.sample_size == 16

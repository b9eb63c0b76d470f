"""Nothing of the user's is replaced without being asked, and a request the machine cannot run is refused before
a folder is made or a model loads: pairs into a folder of other files, eval over an earlier report, unlearn over a
preview, a device or precision this machine lacks. And unlearn's pair making can be capped (--max-retries)."""
import pytest
import torch

from duo_unlearn.trainer import runtime
from duo_unlearn.trainer import pairs as pairs_module
from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.evaluate.run import EvalConfig, plan as eval_plan, report_files
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, check_pair_folder, generate_pairs
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan
from tiny_models import ModelLoaded, NeverDetector

PNG = b"\x89PNG\r\n\x1a\n the user's own picture"


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _refused(capsys, argv, expect):
    """main(argv) exits 2 with one stderr line holding `expect`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("duo-unlearn: error:"), err
    assert expect in lines[0], err
    return lines[0]


PAIRS = ["pairs", "--preset", "testbed-red", "--num-pairs", "1", "--sample-steps", "5", "--max-retries", "0"]
UNLEARN = ["unlearn", "--num-pairs", "1", "--steps", "1", "--stop-every", "0", "--num-retain", "0"]


# -- 1. pairs into a folder of the user's files --

@pytest.mark.parametrize("decoy", ["contact_sheet.png", "unsafe/00000.png", "holiday.png"])
def test_pairs_refuse_a_folder_of_other_files(tmp_path, capsys, no_model, decoy):
    folder = tmp_path / "mine"
    (folder / decoy).parent.mkdir(parents=True)
    (folder / decoy).write_bytes(PNG)
    before = _tree(tmp_path)
    _refused(capsys, [*PAIRS, "--out", folder], "holds files but no pair dataset (dataset.json)")
    assert _tree(tmp_path) == before  # the picture as it was, no dataset.json, no safe/ or unsafe/ made


def test_pair_folder_check_lets_datasets_and_empty_or_new_folders_through(tmp_path):
    check_pair_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_pair_folder(tmp_path / "empty")
    dataset = tmp_path / "dataset"  # a pair dataset resumes, whatever else lies in it
    (dataset / "unsafe").mkdir(parents=True)
    (dataset / "dataset.json").write_text("{}")
    (dataset / "contact_sheet.png").write_bytes(PNG)
    check_pair_folder(dataset)
    killed = tmp_path / "killed"  # a run stopped while writing dataset.json leaves only its temp file
    killed.mkdir()
    (killed / ".dataset.json.tmp").write_text("{")
    check_pair_folder(killed)
    with pytest.raises(UserError, match="no pair dataset"):
        check_pair_folder(tmp_path)


def test_unlearn_refuses_a_pairs_dir_of_other_files_before_the_model_loads(tmp_path, capsys, no_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(PNG)
    before = _tree(tmp_path)
    _refused(capsys, [*UNLEARN, "--pairs-dir", folder, "--out", tmp_path / "u.safetensors"], "no pair dataset")
    assert _tree(tmp_path) == before


# -- 2. eval over an earlier report --

EVAL = ["eval", "--model", "testbed", "--lpips-backbone", "random", "--attacks", "direct,prompts",
        "--images-per-prompt", "1", "--max-prompts", "1", "--sample-steps", "2", "--no-base"]


@pytest.mark.parametrize("decoys", [("report.json", "plot.png"), ("grid_direct.png",), ("grid_unrelated.png",)])
def test_eval_refuses_to_replace_an_earlier_report(tmp_path, capsys, no_model, decoys):
    out = tmp_path / "report"
    out.mkdir()
    for name in decoys:
        (out / name).write_bytes(PNG)
    before = _tree(tmp_path)
    line = _refused(capsys, [*EVAL, "--out", out], "pass --overwrite to replace them")
    assert all(name in line for name in decoys)
    assert _tree(tmp_path) == before


def test_eval_writes_beside_files_it_does_not_write(tmp_path, no_model):
    out = tmp_path / "report"
    out.mkdir()
    (out / "grid_concept_inversion.png").write_bytes(PNG)  # not written with --attacks direct,prompts
    with pytest.raises(ModelLoaded):  # every check passed: the model was next
        main([*EVAL, "--out", str(out)])


def test_eval_overwrite_replaces_exactly_the_files_it_names(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    for name in ("report.json", "plot.png", "grid_direct.png", "notes.txt"):
        (out / name).write_bytes(PNG)
    code = main([*EVAL, "--out", str(out), "--overwrite"])
    assert code == 0, capsys.readouterr().err
    cfg = EvalConfig(model="testbed", lpips_backbone="random", attacks=("direct", "prompts"), base=False,
                     max_prompts=1, out=str(out))
    written = {f.name for f in report_files(cfg, eval_plan(cfg))}
    assert {p.name for p in out.iterdir()} == written | {"notes.txt"}
    assert (out / "notes.txt").read_bytes() == PNG
    assert all((out / name).read_bytes() != PNG for name in written)


# -- 3. unlearn over a preview --

def test_unlearn_refuses_to_replace_a_preview(tmp_path, capsys, no_model):
    (tmp_path / "u20.preview.png").write_bytes(PNG)
    before = _tree(tmp_path)
    _refused(capsys, [*UNLEARN, "--out", tmp_path / "u20.safetensors"], "u20.preview.png already exists")
    assert _tree(tmp_path) == before  # no u20_pairs/ either


@pytest.mark.parametrize("flag", ["--overwrite", "--no-preview"])
def test_unlearn_preview_check_yields_to_overwrite_or_no_preview(tmp_path, no_model, flag):
    (tmp_path / "u20.preview.png").write_bytes(PNG)
    with pytest.raises(ModelLoaded):
        main([*UNLEARN, "--out", str(tmp_path / "u20.safetensors"), flag])
    assert (tmp_path / "u20.preview.png").read_bytes() == PNG


# -- 4. a device or precision this machine lacks --

@pytest.mark.parametrize("argv, expect", [
    ([*PAIRS, "--out", "{tmp}/pa16", "--device", "cuda"], "torch sees no CUDA GPU"),
    ([*PAIRS, "--out", "{tmp}/pa16", "--device", "mps"], "no Apple GPU"),
    ([*PAIRS, "--out", "{tmp}/pa16", "--mixed-precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    ([*UNLEARN, "--out", "{tmp}/u.safetensors", "--device", "cuda"], "torch sees no CUDA GPU"),
    ([*UNLEARN, "--out", "{tmp}/u.safetensors", "--mixed-precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    (["train", "--pairs", "{pairs}", "--out", "{tmp}/t.safetensors", "--device", "cuda:1"], "torch sees no CUDA"),
    (["train", "--pairs", "{pairs}", "--out", "{tmp}/t.safetensors", "--mixed-precision", "fp16"], "fp16 needs"),
    ([*EVAL, "--out", "{tmp}/r", "--device", "cuda"], "torch sees no CUDA GPU"),
])
def test_device_and_precision_are_refused_before_any_folder_or_model(tmp_path, capsys, no_model, cpu_only,
                                                                     pair_dir, argv, expect):
    before = _tree(tmp_path)
    _refused(capsys, [a.format(tmp=tmp_path, pairs=pair_dir) for a in argv], expect)
    assert _tree(tmp_path) == before


# -- 5. unlearn's pair retries --

def test_unlearn_max_retries_reaches_the_pairs_with_the_pairs_default(tmp_path):
    out = str(tmp_path / "u.safetensors")
    assert UnlearnConfig().max_retries == PairConfig().max_retries == -1
    assert plan(UnlearnConfig(out=out))[1][0].pairs.max_retries == -1
    assert plan(UnlearnConfig(out=out, max_retries=0))[1][0].pairs.max_retries == 0
    with pytest.raises(UserError, match="max_retries must be -1"):
        plan(UnlearnConfig(out=out, max_retries=-2))




def test_unlearn_max_retries_ends_a_detector_that_never_agrees(tmp_path, capsys, tiny_model, monkeypatch):
    never = NeverDetector()
    monkeypatch.setattr(pairs_module, "make_detector", lambda spec: never)
    code = main(["unlearn", "--preset", "custom", "--model", str(tiny_model), "--unsafe-prompt", "a red square",
                 "--safe-prompt", "a blue square", "--detector", "colour:red", "--num-pairs", "1", "--steps", "1",
                 "--no-preview", "--max-retries", "2", "--out", str(tmp_path / "u.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no pair survived the colour:red detector" in err[-1], err
    assert never.calls == 3  # the first attempt and two retries
    assert not (tmp_path / "u.safetensors").exists()


class _AgreesOnThirdLook(NeverDetector):
    """Finds the concept on its third look only: the unsafe image is retried twice, then its twin passes at once."""

    def scores(self, images):
        self.calls += 1
        return [1.0 if self.calls == 3 else 0.0] * len(images)


@pytest.mark.parametrize("max_retries, hint", [(-1, True), (5, False)])
def test_retrying_without_a_cap_says_how_to_cap_it(tmp_path, tiny_model, max_retries, hint):
    messages = []
    cfg = PairConfig(out=str(tmp_path / "p"), model=str(tiny_model), unsafe_prompts=("a red square",),
                     safe_prompts=("a blue square",), num_pairs=1, batch_size=1, sample_steps=2,
                     max_retries=max_retries)
    stats = generate_pairs(cfg, progress=lambda e: messages.append(e.message or ""), model=load_model(tiny_model),
                           detector=_AgreesOnThirdLook())
    assert stats.made == 1
    retries = [m for m in messages if m.startswith("retrying")]
    assert len(retries) == 2 and all(("--max-retries N caps it" in m) == hint for m in retries), retries

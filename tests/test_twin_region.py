"""Safe twins restricted to the concept's region: outside it the twin is the unsafe image, pixel for pixel."""
import numpy as np
import pytest
from PIL import Image

from duo_unlearn.trainer.detectors.colour import ColourDetector, read_image
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.pair_dataset import read_pairs
from duo_unlearn.trainer.testbed.shapes import ShapeSpec, render
from duo_unlearn.trainer.twin_region import composite, keep_outside_concept


def _flat(rgb, size=64):
    return Image.new("RGB", (size, size), rgb)


def test_composite_takes_the_twin_inside_and_the_unsafe_image_outside():
    unsafe, twin = _flat((128, 128, 128)), _flat((0, 0, 255))
    mask = np.zeros((64, 64), dtype=bool)
    mask[24:40, 24:40] = True
    out = np.asarray(composite(unsafe, twin, mask, None))
    assert (out[32, 32] == (0, 0, 255)).all()  # inside: the twin
    assert (out[:12] == 128).all() and (out[:, -12:] == 128).all()  # well outside: the unsafe image exactly
    edge = out[32, 18:24, 2]  # a soft edge, not a seam
    assert 0 < edge.min() and len(set(edge.tolist())) > 2


def test_colour_detector_regions_restrict_a_repainted_background():
    red = Image.fromarray(render(ShapeSpec("circle", "red", "gray", 30, 30, 12)))
    twin = Image.fromarray(render(ShapeSpec("circle", "blue", "black", 34, 32, 14)))  # moved, new background
    out = keep_outside_concept(ColourDetector("red"), [red], [twin])[0]
    r = read_image(out)
    assert (r.background, r.colour) == ("gray", "blue")  # the twin's colour, the unsafe image's background


class _LeftQuarter:
    """Says the concept sits in the left quarter of every image."""
    name, threshold = "left-quarter", 0.5

    def regions(self, images):
        out = []
        for im in images:
            m = np.zeros((im.height, im.width), dtype=bool)
            m[:, : im.width // 4] = True
            out.append(m)
        return out


def test_pairs_with_edit_region_concept_keep_the_rest_of_the_unsafe_image(tmp_path, tiny_model):
    class Always(_LeftQuarter):
        def scores(self, images):  # unsafe images pass (1.0 >= 0.5) on the first pass, twins need < 0.5
            self.calls = getattr(self, "calls", 0) + 1
            return [1.0 if self.calls == 1 else 0.0] * len(images)

    cfg = PairConfig(out=str(tmp_path / "d"), model=str(tiny_model), unsafe_prompts=("a red square",),
                     safe_prompts=("a blue square",), num_pairs=2, batch_size=2, sample_steps=3, seed=1,
                     detector="colour:red", edit_region="concept")
    generate_pairs(cfg, model=load_model(tiny_model), detector=Always())
    for r in read_pairs(tmp_path / "d"):
        u = np.asarray(Image.open(tmp_path / "d" / r.unsafe).convert("RGB"))
        s = np.asarray(Image.open(tmp_path / "d" / r.safe).convert("RGB"))
        w = u.shape[1]
        assert (u[:, w // 2:] == s[:, w // 2:]).all()  # right half: untouched by the edit
        assert not (u[:, : w // 4] == s[:, : w // 4]).all()  # the region itself was repainted


@pytest.mark.parametrize("detector", ["none", " None ", ""])
def test_edit_region_needs_a_detector(tmp_path, tiny_model, detector):
    with pytest.raises(UserError, match="needs a detector"):
        generate_pairs(PairConfig(out=str(tmp_path / "d"), model=str(tiny_model), unsafe_prompts=("a",),
                                  safe_prompts=("b",), edit_region="concept", detector=detector))

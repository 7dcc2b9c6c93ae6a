"""Images read as they are: 16-bit, 32-bit and float greyscale scaled to 8 bits from their
range, on the one path that training, test, the image cache and predict.py share; a mode
without a faithful conversion is one line naming the file."""
import numpy as np
import pytest
import torch
from PIL import Image

from tailclip.data.datasets import UnreadableImageError, load_image
from tailclip.data.transforms import Resize, build_transform
from tailclip.engine.cache import CachedImages
from tailclip.tools.predict import ImageFiles


@pytest.fixture
def sixteen_bit(tmp_path):
    """(a 16-bit greyscale PNG, its samples as uint16): a gradient with noise in both bytes."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 65535, 48)[None, :] * np.ones((40, 1))
    samples = np.clip(ramp + rng.integers(-3000, 3000, ramp.shape), 0, 65535).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(samples).save(path)
    assert Image.open(path).mode == "I;16"
    return path, samples


def test_a_16_bit_png_equals_its_8_bit_conversion_within_1(sixteen_bit):
    path, samples = sixteen_bit
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels.shape == (*samples.shape, 3) and (pixels == pixels[..., :1]).all()  # grey
    np.testing.assert_allclose(pixels[..., 0], samples >> 8, atol=1)  # the high byte, within rounding


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_integer_and_float_images_are_scaled_from_their_range(tmp_path, mode):
    eight_bit = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
    samples = eight_bit.astype(np.int32) * 257 if mode == "I" else (eight_bit / 255).astype(np.float32)
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(samples).save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], eight_bit)


def test_an_image_that_cannot_be_read_faithfully_is_one_line_naming_the_file(tmp_path):
    wide = tmp_path / "counts.tif"
    Image.fromarray(np.array([[0, 200000]], dtype=np.int32)).save(wide)
    with pytest.raises(UnreadableImageError) as error:
        load_image(wide)
    assert str(error.value) == (f"cannot read image {wide}: mode I samples from 0 to 200000 lie outside "
                                "0..65535, the range it is read in; save it in 8 or 16 bits")
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (4, 4), (50, 20, 200)).save(lab)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {lab}: mode LAB has no faithful RGB"):
        load_image(lab)


def test_the_image_cache_and_predict_read_16_bits_as_the_8_bit_image(sixteen_bit, tmp_path):
    path, samples = sixteen_bit
    eight_bit = Image.fromarray((samples >> 8).astype(np.uint8)).convert("RGB")
    cached = CachedImages([path], 32, tmp_path / "cache", "test", num_threads=1, progress=False)[0]
    expected = np.asarray(Resize(32)(eight_bit)).astype(int)
    assert np.abs(cached.numpy().astype(int) - expected).max() <= 1
    transform = build_transform(32, False, "imagenet")
    _, tensor, error = ImageFiles([path], transform)[0]
    assert error is None and torch.allclose(tensor, transform(eight_bit), atol=2 / 255 / 0.224)

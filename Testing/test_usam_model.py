"""U-SAM model: shapes, gradients, point convention and bad inputs; slice preprocessing geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from CRCSegmentationLib.networks.usam import USAM, ImageEncoding, USAMConfig
from CRCSegmentationLib.usam import SliceTransform, slice_to_input
from OrganGuidanceLib.validation import InputError


@pytest.fixture(scope="module")
def model224() -> USAM:
    torch.manual_seed(0)
    return USAM(USAMConfig()).eval()


@pytest.fixture(scope="module")
def encoding224(model224) -> ImageEncoding:
    with torch.no_grad():
        return model224.encode_image(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))


def test_encode_and_decode_shapes(model224, encoding224):
    assert tuple(encoding224.embedding.shape) == (2, 256, 14, 14)
    assert [tuple(s.shape) for s in encoding224.skips] == [
        (2, 32, 224, 224), (2, 64, 112, 112), (2, 128, 56, 56), (2, 256, 28, 28)
    ]
    coords = torch.tensor([[[150.0, 40.0], [20.0, 200.0]], [[100.0, 100.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])  # second image: one point and one padding entry
    with torch.no_grad():
        no_prompt = model224.decode(encoding224)
        prompted = model224.decode(encoding224, coords, labels)
    assert tuple(no_prompt.shape) == tuple(prompted.shape) == (2, 3, 224, 224)
    assert torch.isfinite(prompted).all()
    assert not torch.allclose(no_prompt, prompted)  # the points reach the output


def test_decode_batch_rows_are_independent(model224, encoding224):
    coords = torch.tensor([[[150.0, 40.0], [20.0, 200.0]], [[100.0, 100.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    with torch.no_grad():
        batch = model224.decode(encoding224, coords, labels)
        single = ImageEncoding(encoding224.embedding[1:], [s[1:] for s in encoding224.skips])
        alone = model224.decode(single, coords[1:], labels[1:])
        moved = model224.decode(single, torch.tensor([[[30.0, 180.0], [0.0, 0.0]]]), labels[1:])
    torch.testing.assert_close(batch[1:], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone, moved)  # moving the point changes the output


def test_cached_skip_terms_give_the_decoders_result(model224, encoding224):
    """Outside training the skips' share of each up block's first convolution is computed once per
    image (a click re-runs less); the logits equal the plain concatenate-then-convolve path."""
    assert encoding224.skip_terms is not None and len(encoding224.skip_terms) == 4
    plain = ImageEncoding(encoding224.embedding, encoding224.skips)  # no cached terms
    coords, labels = torch.tensor([[[150.0, 40.0]], [[60.0, 70.0]]]), torch.tensor([[1], [1]])
    with torch.no_grad():
        cached, direct = model224.decode(encoding224, coords, labels), model224.decode(plain, coords, labels)
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-4)


def test_forward_backward_reaches_trainable_parts_only():
    torch.manual_seed(0)
    model = USAM(USAMConfig(image_size=64)).train()
    images = torch.rand(2, 3, 64, 64)
    coords = torch.tensor([[[50.0, 10.0]], [[10.0, 50.0]]])
    logits = model(images, coords, torch.ones(2, 1, dtype=torch.long))
    assert tuple(logits.shape) == (2, 3, 64, 64)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    for part in (model.cnn_encoder, model.image_encoder, model.mask_decoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), type(part).__name__
        assert sum(float(g.abs().sum()) for g in grads) > 0, type(part).__name__
    assert not any(p.requires_grad or p.grad is not None for p in model.prompt_encoder.parameters())
    assert not hasattr(model.image_encoder, "patch_embed")  # CNN tokens replace SAM's patch embedding


@pytest.mark.parametrize("xy", [(150.0, 40.0), (40.0, 150.0)])
def test_point_is_x_column_y_row(model224, xy):
    """The point's positional code matches the image positional code at (row y, column x), not (x, y).

    Constructed check of the path the decoder uses: SAM's transformer compares point tokens with the
    image tokens through these codes (sparse point embedding vs dense image PE, same random Fourier map).
    """
    x, y = xy
    sparse, _ = model224.embed_points(1, torch.tensor([[[x, y]]]), torch.tensor([[1]]))
    point_code = sparse[0, 0] - model224.prompt_encoder.point_embeddings[1].weight[0]  # remove "positive" label
    # Dense code of every input pixel centre, laid out like the image (C x rows x cols).
    pixel_codes = model224.prompt_encoder.pe_layer((224, 224))
    similarity = torch.einsum("c,chw->hw", point_code, pixel_codes)
    row, col = divmod(int(similarity.argmax()), 224)
    assert (row, col) == (int(y), int(x))
    assert similarity[int(y), int(x)] > similarity[int(x), int(y)] + 1.0
    # The token grid that meets the point in the decoder peaks at the token holding the point.
    token_codes = model224.prompt_encoder.get_dense_pe()[0]  # 256 x 14 x 14
    token_row, token_col = divmod(int(torch.einsum("c,chw->hw", point_code, token_codes).argmax()), 14)
    assert (token_row, token_col) == (int(y) // 16, int(x) // 16)


def test_bad_inputs_are_named(model224, encoding224):
    with pytest.raises(InputError, match="images"):
        model224.encode_image(torch.rand(1, 1, 224, 224))
    with pytest.raises(InputError, match="together"):
        model224.decode(encoding224, torch.zeros(2, 1, 2))
    with pytest.raises(InputError, match="point_coords: shape"):
        model224.decode(encoding224, torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(InputError, match="point_labels"):
        model224.decode(encoding224, torch.zeros(2, 1, 2), torch.full((2, 1), 2))
    with pytest.raises(InputError, match="outside"):
        model224.decode(encoding224, torch.full((2, 1, 2), 300.0), torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(InputError, match="image_size"):
        USAMConfig(image_size=100)
    with pytest.raises(InputError, match="class_names"):
        USAMConfig(num_classes=2)


# --- sizes (presets) and boxes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> USAM:
    torch.manual_seed(0)
    return USAM(USAMConfig.preset("small")).eval()


def test_presets_set_the_network_sizes(small):
    assert USAMConfig.preset("vit-b") == USAMConfig() and USAMConfig().is_vit_b
    config = small.config
    assert not config.is_vit_b and config.image_size == 128 and config.vit_depth == 2
    assert len(small.image_encoder.blocks) == 2 and small.image_encoder.blocks[0].attn.num_heads == 4
    assert small.mask_decoder.transformer.layers[0].mlp.lin1.out_features == 8 * 128
    with torch.no_grad():
        encoding = small.encode_image(torch.rand(1, 3, 128, 128))
        logits = small.decode(encoding, torch.tensor([[[60.0, 60.0]]]), torch.tensor([[1]]))
    assert tuple(encoding.embedding.shape) == (1, 128, 8, 8)
    assert [s.shape[1] for s in encoding.skips] == [16, 32, 64, 128] and tuple(logits.shape) == (1, 3, 128, 128)
    assert USAMConfig.preset("small", num_classes=2, class_names=("background", "tumor")).num_classes == 2
    assert sum(p.numel() for p in small.parameters()) < 3_000_000  # a few MB shipped


@pytest.mark.parametrize("changes, words", [
    ({"vit_num_heads": 3}, "vit_num_heads: 3 does not divide"),
    ({"cnn_channels": (16, 32, 64, 128, 256)}, "must equal vit_embed_dim"),
    ({"vit_global_attn_indexes": (5,)}, "not block indexes"),
    ({"prompt_embed_dim": 40}, "prompt_embed_dim"),
    ({"cnn_channels": (16, 32, 64)}, "5 positive integers"),
])
def test_bad_sizes_are_named(changes, words):
    with pytest.raises(InputError, match=words):
        USAMConfig.preset("small", **changes)
    with pytest.raises(InputError, match="'huge' is not one of"):
        USAMConfig.preset("huge")


def test_boxes_reach_sams_prompt_encoder_as_boxes(small):
    """A batch of boxes is SAM's own encoding (points + 2 corner tokens, no padding point); NaN rows mean no box."""
    coords, labels = torch.tensor([[[40.0, 50.0]], [[70.0, 20.0]]]), torch.tensor([[1], [1]])
    boxes = torch.tensor([[10.0, 20.0, 90.0, 100.0], [0.0, 0.0, 127.0, 60.0]])
    sparse, _ = small.embed_prompts(2, coords, labels, boxes)
    expected, _ = small.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
    torch.testing.assert_close(sparse, expected)
    assert sparse.shape[1] == 3
    box_only, _ = small.embed_prompts(2, None, None, boxes)
    torch.testing.assert_close(box_only, small.prompt_encoder(points=None, boxes=boxes, masks=None)[0])
    no_box = torch.full((2, 4), float("nan"))
    torch.testing.assert_close(small.embed_prompts(2, coords, labels, no_box)[0], small.embed_points(2, coords, labels)[0])


def test_a_batch_can_mix_samples_with_and_without_a_box(small):
    torch.manual_seed(3)
    with torch.no_grad():
        encoding = small.encode_image(torch.rand(2, 3, 128, 128))
        coords, labels = torch.tensor([[[40.0, 50.0]], [[70.0, 20.0]]]), torch.tensor([[1], [1]])
        boxes = torch.tensor([[10.0, 20.0, 90.0, 100.0], [float("nan")] * 4])
        mixed = small.decode(encoding, coords, labels, boxes)
        first = small.decode(encoding.select(torch.tensor([0])), coords[:1], labels[:1], boxes[:1])
        second_boxed = small.decode(encoding.select(torch.tensor([1])), coords[1:], labels[1:],
                                    torch.tensor([[0.0, 0.0, 127.0, 127.0]]))
    torch.testing.assert_close(mixed[:1], first, rtol=1e-4, atol=1e-4)  # the boxed sample: exactly SAM's tokens
    assert not torch.allclose(mixed[1:], second_boxed, atol=1e-3)  # the NaN row got no box
    sparse, _ = small.embed_prompts(2, coords, labels, boxes)
    assert torch.equal(sparse[1, 1:], small.prompt_encoder.not_a_point_embed.weight.expand(2, -1))  # padding


@pytest.mark.parametrize("boxes, words", [
    (torch.zeros(1, 4), "expected 2 x 4"),
    (torch.zeros(2, 4, dtype=torch.long), "expected floats"),
    (torch.tensor([[1.0, float("nan"), 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]), "partly NaN"),
    (torch.tensor([[1.0, 2.0, 300.0, 4.0], [1.0, 2.0, 3.0, 4.0]]), "outside the 128 x 128"),
    (torch.tensor([[50.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]), "x0 <= x1"),
])
def test_bad_boxes_are_named(small, boxes, words):
    with pytest.raises(InputError, match=words):
        small.embed_prompts(2, None, None, boxes)


# --- slice <-> input geometry ---------------------------------------------------------------


def test_window_and_channels():
    slice_hu = np.full((512, 512), -1000.0)
    slice_hu[:, 256:] = 40.0  # the window centre
    image, transform = slice_to_input(slice_hu, (-160.0, 240.0), 224)
    assert image.shape == (3, 224, 224) and image.dtype == np.float32
    assert np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])
    assert image[0, 100, 10] == 0.0 and image[0, 100, 200] == pytest.approx(0.5)
    assert transform == SliceTransform(rows=512, cols=512, size=224)


def test_coordinate_round_trip_and_convention():
    transform = SliceTransform(rows=512, cols=400, size=224)
    xy = np.array([[0.0, 0.0], [300.0, 100.0], [399.0, 511.0], [-0.5, -0.5]])
    back = transform.to_slice_xy(transform.to_input_xy(xy))
    np.testing.assert_allclose(back, xy, atol=1e-4)
    # Pixel edges map to edges: the slice's outer edge -0.5 is the input's -0.5; centres scale about it.
    np.testing.assert_allclose(transform.to_input_xy(np.array([[-0.5, 511.5]])), [[-0.5, 223.5]], atol=1e-5)
    expected = [[300.5 * 224 / 400 - 0.5, 100.5 * 224 / 512 - 0.5]]  # x from columns (400), y from rows (512)
    np.testing.assert_allclose(transform.to_input_xy(np.array([[300.0, 100.0]])), expected, atol=1e-5)
    with pytest.raises(InputError, match="N x 2"):
        transform.to_input_xy(np.zeros(3))


def test_bright_pixel_lands_at_mapped_location_and_back():
    slice_hu = np.full((512, 512), -1000.0)
    slice_hu[100, 300] = 1000.0  # row 100, column 300
    image, transform = slice_to_input(slice_hu, (-160.0, 240.0), 224)
    expected_x, expected_y = transform.to_input_xy(np.array([[300.0, 100.0]]))[0]
    row, col = np.unravel_index(int(np.argmax(image[0])), image[0].shape)
    assert abs(col - expected_x) <= 1.0 and abs(row - expected_y) <= 1.0
    assert not (abs(col - 100 * 224 / 512) <= 2 and abs(row - 300 * 224 / 512) <= 2)
    # Weighted centre of the response equals the mapped point (bilinear keeps the geometry exactly).
    weights = image[0]
    rows, cols = np.mgrid[0:224, 0:224]
    assert (weights * cols).sum() / weights.sum() == pytest.approx(expected_x, abs=0.05)
    assert (weights * rows).sum() / weights.sum() == pytest.approx(expected_y, abs=0.05)

    logits = torch.zeros(2, 224, 224)
    logits[1, round(float(expected_y)), round(float(expected_x))] = 10.0
    in_slice = transform.logits_to_slice(logits)
    assert tuple(in_slice.shape) == (2, 512, 512)
    slice_row, slice_col = np.unravel_index(int(in_slice[1].argmax()), (512, 512))
    assert abs(slice_col - 300) <= 3 and abs(slice_row - 100) <= 3


def test_label_to_input_nearest_centre():
    labels = np.zeros((512, 512), dtype=np.uint8)
    labels[80:120, 280:320] = 2
    transform = SliceTransform(rows=512, cols=512, size=224)
    resized = transform.label_to_input(labels)
    assert resized.dtype == np.int64 and set(np.unique(resized)) == {0, 2}
    rows, cols = np.nonzero(resized == 2)
    centre = transform.to_input_xy(np.array([[299.5, 99.5]]))[0]
    assert cols.mean() == pytest.approx(centre[0], abs=0.6) and rows.mean() == pytest.approx(centre[1], abs=0.6)


def test_bad_slices_are_named():
    with pytest.raises(InputError, match="2D slice"):
        slice_to_input(np.zeros((2, 4, 4)), (-160, 240), 224)
    with pytest.raises(InputError, match="NaN"):
        slice_to_input(np.full((4, 4), np.nan), (-160, 240), 224)
    with pytest.raises(InputError, match="hu_window"):
        slice_to_input(np.zeros((4, 4)), (240, -160), 224)
    with pytest.raises(InputError, match="logits"):
        SliceTransform(rows=4, cols=4, size=224).logits_to_slice(torch.zeros(3, 100, 100))

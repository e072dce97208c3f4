"""Small "pretrained" checkpoints written to disk by the backbone tests (no network)."""

from __future__ import annotations

from pathlib import Path

import torch

# every word the synthetic CivilComments layout writes (rest_fair.wilds.synthetic)
WORDS = (
    "the article was about city council budget today read thanks great helpful agree kind "
    "thoughtful idiot stupid moron pathetic disgusting trash male_people female_people "
    "lgbtq_people christian_people muslim_people other_religions_people black_people "
    "white_people"
).split()


def save_torchvision_state_dict(name: str, path: Path, *, seed: int = 0,
                                num_classes: int = 1000) -> Path:
    """A torchvision model with random weights, saved as a plain state dict."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return path


def _word_level_tokenizer(specials: list[str], *, first: str, last: str,
                          **tokens: object) -> tuple[dict[str, int], object]:
    """A whitespace, word-level fast tokenizer of ``specials`` then :data:`WORDS` that puts
    ``first`` and ``last`` around every text; ``tokens`` name its special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=tokens["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", special_tokens=[(first, vocab[first]), (last, vocab[last])])
    return vocab, PreTrainedTokenizerFast(tokenizer_object=core, **tokens)


def save_tiny_distilbert(folder: Path, *, seed: int = 0) -> Path:
    """A 1-layer DistilBERT with random weights and a word-level tokenizer, saved with
    ``save_pretrained`` (what a downloaded Hub model folder holds)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    vocab, tokenizer = _word_level_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], first="[CLS]", last="[SEP]",
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=1, n_heads=2,
                              hidden_dim=32, max_position_embeddings=64, num_labels=2,
                              pad_token_id=0)
    model = DistilBertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_roberta(folder: Path, *, seed: int = 0) -> Path:
    """A 1-layer RoBERTa with 34 position embeddings and padding id 1, so that it reads 32
    tokens (its positions count on from the padding id), and a word-level tokenizer that
    does not say its maximum length; saved with ``save_pretrained``."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    vocab, tokenizer = _word_level_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], first="<s>", last="</s>",
        unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=34, pad_token_id=1, num_labels=2)
    model = RobertaForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""The generated text task of ``run.py``: topic sentences, a word-level tokenizer, a tiny BERT.

Nothing is downloaded: the sentences come from the word lists below, the tokenizer is built with
``tokenizers`` over their vocabulary, and the model is a 2-layer BERT (hidden 32) from a config.

**Sentences.** Six topics (:data:`TOPICS`: sports, politics, science, music, and food, travel
for pretraining only), each with 16 words of its own; eight ambiguous words shared by two topics
(:data:`SHARED`); 48 filler words common to all (:data:`FILLER`). A sentence of topic ``c`` has
1 to 4 topical words and 4 to 10 filler words, in random order. Each topical word is drawn from
``c``'s own words with probability 0.8, from ``c``'s ambiguous words with probability 0.12, and
from another topic's words with probability 0.08 (a misleading cue). So the topic is in a
handful of words among fillers, and some sentences point to another topic: even the Bayes
classifier (the generator's own likelihoods, :func:`bayes_accuracy`) is right on only about 93%
of them.

**Tasks.** ``pretrain``: six topics (the four and food, travel), each with only its first 10
words, clean labels, for the tiny BERT trained from scratch (the "pretrained" model).
``topics``: the four topics with all 16 words each, the fine-tuning task: a new 4-class head,
and six words per topic whose embeddings pretraining never shaped, to be learnt from noisy
labels.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TOPICS: dict[str, tuple[str, ...]] = {
    "sports": _words(
        "goal match coach league season striker referee stadium tournament score player "
        "champion keeper derby medal sprint"
    ),
    "politics": _words(
        "senate vote minister election policy parliament campaign law governor budget treaty "
        "party debate reform cabinet mayor"
    ),
    "science": _words(
        "experiment theory lab molecule physics data hypothesis microscope genome telescope "
        "chemical neuron quantum fossil formula particle"
    ),
    "music": _words(
        "guitar album concert melody band chorus rhythm singer orchestra piano lyrics tempo "
        "drummer symphony violin song"
    ),
    # pretraining only
    "food": _words(
        "recipe bread cheese soup kitchen chef flavor dessert salad spice bakery noodle sauce "
        "grill menu butter"
    ),
    "travel": _words(
        "flight hotel passport island beach luggage airport cruise museum visa journey map "
        "border train resort ferry"
    ),
}
#: Ambiguous words, each shared by two topics.
SHARED: dict[str, tuple[str, str]] = {
    "record": ("sports", "music"), "star": ("sports", "music"), "tour": ("sports", "music"),
    "report": ("politics", "science"), "study": ("politics", "science"),
    "fund": ("politics", "science"), "team": ("sports", "science"),
    "stage": ("music", "politics"),
}
FILLER = _words(
    "the a of and in on with after before today yesterday people city new old big small said "
    "says local many some week year time good bad long short first last this that it they "
    "we he she was is will from about near over again still just very"
)
#: The fine-tuning task's topics (the classes, in this order).
NAMES = ("sports", "politics", "science", "music")
#: The pretraining task's topics: those four and two more.
PRETRAIN_NAMES = tuple(TOPICS)
#: Words per topic the pretraining sentences use (the first ones): the rest are new words for
#: the fine-tuning task, whose embeddings pretraining never shaped.
PRETRAIN_WORDS = 10
P_OWN, P_SHARED = 0.8, 0.12  # the rest (0.08): a word of another topic
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _shared_of(topic: str) -> list[str]:
    return [w for w, pair in SHARED.items() if topic in pair]


def _topical_word(rng: random.Random, topic: str, topics: Sequence[str], known: int) -> str:
    u = rng.random()
    if u < P_OWN:
        return rng.choice(TOPICS[topic][:known])
    if u < P_OWN + P_SHARED and _shared_of(topic):
        return rng.choice(_shared_of(topic))
    return rng.choice(TOPICS[rng.choice([t for t in topics if t != topic])][:known])


def sentences(n: int, seed: int, *, task: str = "topics") -> list[tuple[str, int]]:
    """``n`` seeded (sentence, topic index) pairs, topics drawn uniformly: of the fine-tuning
    task (``topics``: :data:`NAMES`, all their words), or of the pretraining task
    (``pretrain``: :data:`PRETRAIN_NAMES`, the first :data:`PRETRAIN_WORDS` words of each)."""
    topics, known = (PRETRAIN_NAMES, PRETRAIN_WORDS) if task == "pretrain" else (NAMES, 16)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(len(topics))
        words = [_topical_word(rng, topics[label], topics, known)
                 for _ in range(rng.randint(1, 4))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def write_task(path: Path, n: int, seed: int, *, task: str = "topics") -> Path:
    """A CSV (``text``, ``label``) of ``n`` sentences of ``task`` (:func:`sentences`)."""
    import pandas as pd

    rows = [{"text": text, "label": label} for text, label in sentences(n, seed, task=task)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _word_probabilities(topic: str) -> dict[str, float]:
    """P(topical word | topic) under the generator."""
    probs: dict[str, float] = {}
    own, shared = TOPICS[topic], _shared_of(topic)
    others = [t for t in NAMES if t != topic]
    for w in own:
        probs[w] = probs.get(w, 0.0) + P_OWN / len(own)
    for w in shared:
        probs[w] = probs.get(w, 0.0) + P_SHARED / len(shared)
    for t in others:
        for w in TOPICS[t]:
            probs[w] = probs.get(w, 0.0) + (1 - P_OWN - P_SHARED) / len(others) / len(TOPICS[t])
    return probs


def bayes_accuracy(data: Sequence[tuple[str, int]]) -> float:
    """The accuracy of the Bayes classifier (the generator's own likelihoods, uniform prior) on
    ``data``: the best any model can do."""
    tables = {t: _word_probabilities(t) for t in NAMES}
    topical = set().union(*tables.values())  # fillers are equally likely under every topic
    correct = 0
    for text, label in data:
        scores = []
        for t in NAMES:
            # a topical word a topic never produces (another pair's shared word) rules it out
            scores.append(sum(math.log(tables[t][w]) if w in tables[t] else -math.inf
                              for w in text.split() if w in topical))
        correct += int(max(range(len(NAMES)), key=lambda i: scores[i]) == label)
    return correct / len(data)


def vocabulary() -> list[str]:
    words = [w for topic in TOPICS for w in TOPICS[topic]] + list(SHARED) + list(FILLER)
    return [*SPECIALS, *dict.fromkeys(words)]


def save_tokenizer(folder: Path) -> int:
    """A word-level BERT-style tokenizer (``[CLS] text [SEP]``) saved in ``folder``; returns the
    vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.save_pretrained(str(folder))
    return len(vocab)


def save_initial_model(folder: Path, *, seed: int) -> None:
    """A randomly initialized tiny BERT classifier for the pretraining task (6 labels), saved
    with its tokenizer in ``folder``: the starting point of pretraining."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_tokenizer(folder)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, pad_token_id=0,
        num_labels=len(PRETRAIN_NAMES), id2label=dict(enumerate(PRETRAIN_NAMES)),
        label2id={name: i for i, name in enumerate(PRETRAIN_NAMES)},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(str(folder))
    (folder / "task.json").write_text(json.dumps({"task": "pretrain", "seed": seed}) + "\n")

"""Offline reward sources: reference similarity, rules (QiZhen criteria), composite, reward model."""

from __future__ import annotations

import asyncio
import math

import pytest

from reward.base import Sample, Score, score_sync
from reward.composite import Composite
from reward.rules import Rules
from reward.similarity import ReferenceSimilarity, tokenize

PROMPT = [{"role": "user", "content": "孩子发烧了怎么办？"}]


def sample(completion: str, reference: str | None = None, **metadata) -> Sample:
    return Sample(PROMPT, completion, reference, metadata=metadata)


# --------------------------------------------------------------------------------------------- similarity


@pytest.mark.parametrize("metric,tokenizer", [("rouge_l", "jieba"), ("rouge_l", "char"), ("char_f1", "jieba")])
def test_similarity_identical_is_one_and_disjoint_is_zero(metric, tokenizer):
    source = ReferenceSimilarity(metric, tokenizer)
    same, disjoint = score_sync(source, [sample("多喝水，注意休息。", "多喝水，注意休息。"), sample("布洛芬", "就医检查")])
    assert same.value == 1.0 and disjoint.value == 0.0


def test_rouge_l_over_jieba_words_matches_hand_computation():
    candidate, reference = "孩子发烧了，多喝水，注意休息。", "发烧时要多喝水和休息"
    assert tokenize(candidate) == ["孩子", "发烧", "了", "多喝水", "注意", "休息"]
    assert tokenize(reference) == ["发烧时", "要", "多喝水", "和", "休息"]
    # LCS = [多喝水, 休息] = 2; P = 2/6, R = 2/5; F1 = 2PR/(P+R) = 4/11.
    (score,) = score_sync(ReferenceSimilarity(), [sample(candidate, reference)])
    assert score.value == pytest.approx(4 / 11) and score.parts == {"rouge_l": pytest.approx(4 / 11)}


def test_rouge_l_over_characters_matches_hand_computation():
    # LCS("多喝水休息", "多休息") = 3; P = 3/5, R = 3/3; F1 = 0.75.
    (score,) = score_sync(ReferenceSimilarity("rouge_l", "char"), [sample("多喝水休息", "多休息")])
    assert score.value == pytest.approx(0.75)


def test_char_f1_matches_hand_computation_and_ignores_punctuation():
    # Bag overlap of 发烧发烧 vs 发烧咳嗽: 发×1 + 烧×1 = 2; P = 2/4, R = 2/4; F1 = 0.5.
    half, punct = score_sync(ReferenceSimilarity("char_f1"), [sample("发烧发烧", "发烧咳嗽"), sample("发烧。", "发烧")])
    assert half.value == pytest.approx(0.5) and punct.value == 1.0


def test_similarity_without_reference_fails():
    none, blank = score_sync(ReferenceSimilarity(), [sample("答"), sample("答", "。 ")])
    assert none.value is None and none.error == "no reference"
    assert blank.value is None and "reference" in blank.error


# --------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "criterion,items,answer,passed",
    [
        (1, ["发热", "咳嗽"], "可能有咳嗽", True),
        (1, ["发热", "咳嗽"], "无相关内容", False),
        (2, ["发热", "咳嗽"], "可能有咳嗽", True),  # exactly 1/2
        (2, ["发热", "咳嗽", "腹泻", "皮疹"], "可能有咳嗽", False),  # 1/4 < 1/2
        (3, ["发热", "咳嗽", "腹泻"], "发热伴咳嗽", True),  # exactly 2/3
        (3, ["发热", "咳嗽", "腹泻"], "发热", False),  # 1/3
        (3, ["a", "b", "c", "d", "e", "f"], "a b c", False),  # 3/6 < 2/3
        (3, ["a", "b", "c", "d", "e", "f"], "a b c d", True),  # 4/6 = 2/3
    ],
)
def test_qizhen_criteria_including_exact_half_and_two_thirds_edges(criterion, items, answer, passed):
    (score,) = score_sync(Rules("indications", criterion), [sample(answer, indications=items)])
    assert score.parts == {f"qizhen_c{criterion}": float(passed)} and score.value == float(passed)


def test_kb_hit_rate_counts_synonyms_case_and_spaces():
    items = [["发热", "发烧"], "Amoxicillin", "皮 疹"]
    (score,) = score_sync(Rules("items"), [sample("孩子发烧，可用 amoxicillin，注意皮疹", items=items)])
    assert score.parts == {"kb_hit_rate": 1.0}


def test_missing_kb_items_fail_rather_than_score_zero():
    (score,) = score_sync(Rules("items", 1), [sample("答")])
    assert score.value is None and "items" in score.error


def test_required_and_forbidden_phrases():
    rules = Rules(required_phrases=["多喝水", "观察"], forbidden_phrases=["抗生素"])
    good, bad = score_sync(rules, [sample("多喝水，密切观察"), sample("多喝水，吃点抗生素")])
    assert good.parts == {"required": 1.0, "forbidden": 1.0} and good.value == 1.0
    assert bad.parts == {"required": 0.5, "forbidden": 0.0} and bad.value == 0.25


def test_red_flag_in_prompt_requires_a_referral():
    rules = Rules(red_flag_terms=["抽搐", "呼吸困难"])
    flagged = [{"role": "user", "content": "孩子高烧后抽搐了"}]
    results = score_sync(rules, [
        Sample(flagged, "先物理降温"), Sample(flagged, "请立即去医院"), Sample(PROMPT, "多喝水"),
    ])
    assert [r.parts["referral"] for r in results] == [0.0, 1.0, 1.0]
    assert "抽搐" in results[0].rationale


def test_length_bounds_hard_by_default_and_soft_with_penalty():
    hard = Rules(min_chars=4, max_chars=10)
    soft = Rules(min_chars=4, max_chars=10, length_penalty=1.0)
    texts = ["多喝水", "多 喝 水 休 息", "一" * 15]  # 3 chars, 5 (spaces not counted), 15
    assert [s.parts["length"] for s in score_sync(hard, [sample(t) for t in texts])] == [0.0, 1.0, 0.0]
    # soft: 1 - 1.0·(4-3)/4 = 0.75; 1 - 1.0·(15-10)/10 = 0.5.
    assert [s.parts["length"] for s in score_sync(soft, [sample(t) for t in texts])] == [0.75, 1.0, 0.5]


def test_rules_value_is_mean_of_parts_and_one_without_checks():
    rules = Rules("items", 1, required_phrases=["观察"], min_chars=100)
    (score,) = score_sync(rules, [sample("发热时观察", items=["发热"])])
    assert score.parts == {"qizhen_c1": 1.0, "required": 1.0, "length": 0.0}
    assert score.value == pytest.approx(2 / 3)
    assert score_sync(Rules(), [sample("x")])[0].value == 1.0


# --------------------------------------------------------------------------------------------- composite


class Stub:
    """A reward source returning fixed values (None = could not score)."""

    def __init__(self, values, parts_key="p"):
        self.values, self.parts_key = values, parts_key

    async def score(self, samples):
        await asyncio.sleep(0)
        return [Score.failed("stub failure") if v is None else Score(v, parts={self.parts_key: v * 10})
                for v in self.values[: len(samples)]]


SAMPLES3 = [sample(f"a{i}") for i in range(3)]


def test_composite_zscore_weighted_sum_by_hand():
    composite = Composite([(Stub([1.0, 2.0, 3.0]), 1.0), (Stub([10.0, 10.0, 40.0]), 0.5)])
    results = score_sync(composite, SAMPLES3)
    za = [-math.sqrt(1.5), 0.0, math.sqrt(1.5)]  # mean 2, population std sqrt(2/3)
    zb = [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)]  # mean 20, std sqrt(200)
    assert [r.value for r in results] == pytest.approx([a + 0.5 * b for a, b in zip(za, zb)])
    assert results[2].parts == {"stub": 3.0, "stub.p": 30.0, "stub2": 40.0, "stub2.p": 400.0}


def test_composite_minmax_and_none():
    minmax = score_sync(Composite([Stub([1.0, 2.0, 3.0]), Stub([5.0, 5.0, 5.0])], "minmax"), SAMPLES3)
    assert [r.value for r in minmax] == pytest.approx([0.5, 1.0, 1.5])  # constant source → 0.5
    raw = score_sync(Composite([(Stub([1.0, 2.0, 3.0]), 2.0)], "none"), SAMPLES3)
    assert [r.value for r in raw] == [2.0, 4.0, 6.0]


def test_composite_none_propagates_names_the_source_and_is_left_out_of_statistics():
    composite = Composite([{"_component_": f"{__name__}.Stub", "values": [1.0, 2.0, 3.0, 100.0], "name": "a"},
                           {"_component_": f"{__name__}.Stub", "values": [0.0, 1.0, 2.0, None], "name": "b",
                            "weight": 0.0}])
    results = score_sync(composite, SAMPLES3 + [sample("a3")])
    assert results[3].value is None and "b: stub failure" in results[3].error
    assert results[3].parts["a"] == 100.0
    # Sample 3's 100 is not in a's statistics: the first three are normalised among themselves.
    assert [r.value for r in results[:3]] == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])


def test_composite_builds_real_sources_from_component_dicts():
    composite = Composite([
        {"_component_": "reward.similarity.ReferenceSimilarity", "metric": "char_f1", "weight": 0.5, "name": "sim"},
        {"_component_": "reward.rules.Rules", "required_phrases": ["休息"]},
    ], normalize="none")
    (score,) = score_sync(composite, [sample("多休息", "多休息")])
    assert score.value == pytest.approx(0.5 * 1.0 + 1.0 * 1.0)
    assert score.parts["sim"] == 1.0 and score.parts["rules.required"] == 1.0
    with pytest.raises(ValueError, match="cannot import"):
        Composite([{"_component_": "reward.nothing.Here"}])


# --------------------------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["孩子发烧了怎么办？", "多喝水，注意休息。", "体温超过38.5度可以吃布洛芬。", "如果抽搐请立即就医。"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=template)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


RM_SAMPLES = [
    Sample(PROMPT, "多喝水。"),
    Sample(PROMPT, "体温超过38.5度可以吃布洛芬，如果抽搐请立即就医。多喝水，注意休息。"),
    Sample([{"role": "system", "content": "你是儿科医生"}, *PROMPT], "注意休息"),
    Sample(PROMPT, "如果抽搐请立即就医。"),
    Sample(PROMPT, "孩子"),
]


def test_reward_model_batched_scores_equal_unbatched_and_are_deterministic(tiny_reward_model):
    from reward.model import RewardModel

    batched = score_sync(RewardModel(str(tiny_reward_model), batch_size=4, device="cpu", dtype="float32"), RM_SAMPLES)
    single_model = RewardModel(str(tiny_reward_model), batch_size=1, device="cpu")
    single = score_sync(single_model, RM_SAMPLES)
    again = score_sync(single_model, RM_SAMPLES)
    values = [s.value for s in batched]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert values == pytest.approx([s.value for s in single], abs=1e-5)
    assert [s.value for s in single] == [s.value for s in again]
    assert len(set(round(v, 6) for v in values)) > 1  # different inputs, different scores
    assert single_model.render(RM_SAMPLES[0]).startswith("<|im_start|>user\n孩子发烧了怎么办？<|im_end|>")


def test_reward_model_loads_lazily_and_fails_clearly(tmp_path):
    from reward.model import RewardModel, RewardModelLoadError

    model = RewardModel(str(tmp_path / "missing"))  # constructing does not touch the path
    with pytest.raises(RewardModelLoadError, match="missing"):
        score_sync(model, RM_SAMPLES[:1])

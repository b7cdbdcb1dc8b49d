"""Supervised fine-tuning (--method sft): the loss, its data rows, caption dropout, and segment-encoded training
(LongAlign's first stage)."""

import pytest
import torch
from safetensors.torch import load_file

from diffalign.config import ConfigError, DataConfig, load_config
from diffalign.data.captioned import CaptionedImages, collate_captioned
from diffalign.models.lora import LORA_FILE
from diffalign.objectives import get_objective
from diffalign.paths import REPO_ROOT, TOY_SD

LONG = str(REPO_ROOT / "assets/toy-data/captioned_long.parquet")
FAST = [("train.max_steps", "2"), ("train.batch_size", "4"), ("eval.enabled", "false"), ("train.report_to", "none"),
        ("data.max_pairs", "32"), ("train.warmup_steps", "0")]


def test_the_loss_is_the_mean_per_sample_error():
    sft = get_objective("sft")
    loss, metrics = sft.row_loss(torch.tensor([0.1, 0.3, 0.8]), None, {})
    assert loss.item() == pytest.approx(0.4) and metrics["denoising_error"] == pytest.approx(0.4)
    assert not sft.needs_reference and sft.text_encoding == "truncate"
    with pytest.raises(ValueError, match="text_encoding"):
        get_objective("sft", text_encoding="chunks")
    with pytest.raises(ValueError, match="max_text_length"):
        get_objective("sft", text_encoding="segments", max_text_length=0)


def _dataset(dropout: float, seed: int = 0):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOY_SD, subfolder="tokenizer")
    cfg = DataConfig(source=LONG, caption_dropout=dropout, max_pairs=200)
    return CaptionedImages(cfg, tokenizer, seed, negatives=False, caption_dropout=True)


def test_one_row_per_image_under_its_own_caption_some_dropped_reproducibly():
    data = _dataset(0.3)
    examples = [data[i] for i in range(200)]
    empty = [e["caption"] == "" for e in examples]
    assert 30 <= sum(empty) <= 90  # about 30% of 200
    assert [e["caption"] for e in examples] == [_dataset(0.3)[i]["caption"] for i in range(200)]  # seeded per row
    for i, e in enumerate(examples):  # each image with its own row's caption (or the empty one)
        assert e["caption"] in ("", data.table[int(data.rows[i])]["caption"])
    batch = collate_captioned(examples[:4])
    assert batch["row_image"].tolist() == batch["row_text"].tolist() == batch["row_group"].tolist() == [0, 1, 2, 3]
    assert batch["captions"] == [e["caption"] for e in examples[:4]] and batch["input_ids"].shape == (4, 77)
    assert all(e["caption"] for e in (_dataset(0.0)[i] for i in range(50)))  # no dropout: every caption kept


def test_caption_dropout_is_refused_where_every_caption_is_needed():
    for method in ("tdpo", "softrepa"):  # TPO perturbs the true caption; SoftREPA contrasts all captions
        with pytest.raises(ConfigError, match="caption_dropout"):
            load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [("data.caption_dropout", "0.1")])
    load_config(REPO_ROOT / "configs/toy/sft.yaml", [("data.caption_dropout", "0.2")])


def test_segments_refuse_the_encoding_cache_and_a_trained_text_encoder():
    for override in (("data.cache_encodings", "true"), ("lora.text_encoder", "true")):
        with pytest.raises(ConfigError, match="segments"):
            load_config(REPO_ROOT / "configs/toy/sft.yaml", [override])
    load_config(REPO_ROOT / "configs/toy/sft.yaml", [("objective.text_encoding", "truncate"),
                                                     ("data.cache_encodings", "true")])


def test_training_reads_each_caption_sentence_by_sentence(tmp_path, step_spy):
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffalign.train import train

    cfg = load_config(REPO_ROOT / "configs/toy/sft.yaml", FAST + [("output_dir", str(tmp_path))])
    summary = train(cfg)
    assert summary["steps"] == 2 and summary["first_metrics"]["denoising_error"] > 0
    lora_b = [v for k, v in load_file(tmp_path / LORA_FILE).items() if "lora_B" in k or "lora.up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained
    card = (tmp_path / "README.md").read_text()  # tells users to sample it the way it trained
    assert "as_long_prompt_pipeline(pipe, 240)" in card and "preference-alignment" not in card
    batch, step = step_spy["batch"], step_spy["step"]
    text, _ = step._text_rows(batch)
    assert text.shape[:2] == (4, 240)  # max_text_length rows, not 77
    # Row by row what the UNet read: image i's caption, its first sentence encoded alone (start + content tokens).
    tokenizer = CLIPTokenizer.from_pretrained(TOY_SD, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder").eval()
    i = next(k for k, c in enumerate(batch["captions"]) if c)
    with torch.no_grad():  # each sentence encoded alone, its start and content tokens kept, its end token dropped
        expected = torch.cat([encoder(tokenizer(sentence + ".", return_tensors="pt").input_ids)[0][0, :-1]
                              for sentence in batch["captions"][i].split(".") if sentence.strip()])[:240]
    torch.testing.assert_close(text[i, : len(expected)], expected, rtol=1e-4, atol=1e-5)

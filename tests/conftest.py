"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def step_spy(monkeypatch) -> dict:
    """The trainer's step object, last batch and unwrapped UNet, kept for inspection after training (the trainer
    runs unchanged)."""
    from diffalign.core.step import TrainStep

    seen, original = {}, TrainStep.__call__

    def call(self, unet, batch):
        seen["step"], seen["batch"], seen["unet"] = self, batch, self.accelerator.unwrap_model(unet)
        return original(self, unet, batch)

    monkeypatch.setattr(TrainStep, "__call__", call)
    return seen


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A random LLaVA (CLIP vision tower + Llama) with a LlavaProcessor, from small configs, saved like a hub folder
    (PPD's VLM user encoder, the MLLM annotator)."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from diffalign.models.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.model_max_length = 1024
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="default",
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vlm")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(folder)
    return str(folder)

"""The pipelines in diffalign/pipelines/: long prompts through segment encoding, and SoftREPA soft tokens."""

import torch
from diffusers import StableDiffusionPipeline

from diffalign.models.segment_encoding import encode_prompts
from diffalign.models.soft_tokens import attach_soft_tokens, save_soft_tokens
from diffalign.paths import TOY_SD
from diffalign.toy.prompts import prompt_set
from diffalign.pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
from diffalign.pipelines.soft_tokens_sd import SoftTokensStableDiffusionPipeline

KW = dict(num_inference_steps=3, output_type="np")


def test_long_prompt_pipeline_samples_from_segment_encoded_states():
    base = StableDiffusionPipeline.from_pretrained(TOY_SD)
    long = LongPromptStableDiffusionPipeline(**base.components)
    prompts = prompt_set("long")[:2]
    states, _ = encode_prompts(prompts, [(base.tokenizer, base.text_encoder)], 160)
    empty, _ = encode_prompts(["", ""], [(base.tokenizer, base.text_encoder)], 160)
    expected = base(prompt_embeds=states, negative_prompt_embeds=empty,
                    generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **KW).images
    got = long(prompts, max_text_length=160, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **KW).images
    assert abs(got - expected).max() < 1e-5
    plain = base(prompts, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **KW).images
    assert abs(got - plain).max() > 1e-3  # not the 77-token encoding


def test_soft_tokens_pipeline_loads_the_trained_tokens(tmp_path):
    trained = StableDiffusionPipeline.from_pretrained(TOY_SD)
    torch.manual_seed(0)
    tokens = attach_soft_tokens(trained.unet, num_tokens=3)
    save_soft_tokens(tokens, tmp_path)
    expected = trained("a red circle", generator=torch.Generator().manual_seed(0), **KW).images
    pipe = SoftTokensStableDiffusionPipeline.from_pretrained(TOY_SD)
    pipe.load_soft_tokens(str(tmp_path))
    got = pipe("a red circle", generator=torch.Generator().manual_seed(0), **KW).images
    assert abs(got - expected).max() < 1e-5
    without = StableDiffusionPipeline.from_pretrained(TOY_SD)("a red circle", generator=torch.Generator().manual_seed(0),
                                                             **KW).images
    assert abs(without - expected).max() > 1e-4  # the tokens do change the images


def test_long_prompt_sdxl_pipeline_samples_from_both_encoders_segment_states():
    from diffusers import StableDiffusionXLPipeline

    from diffalign.models.tiny import build_tiny_sdxl
    from diffalign.pipelines.long_prompt_sdxl import LongPromptStableDiffusionXLPipeline

    base = build_tiny_sdxl()
    long = LongPromptStableDiffusionXLPipeline(**base.components)
    prompts = prompt_set("long")[:2]
    encoders = [(base.tokenizer, base.text_encoder), (base.tokenizer_2, base.text_encoder_2)]
    states, pooled = encode_prompts(prompts, encoders, 120)
    assert states.shape == (2, 120, 64) and pooled.shape == (2, 32)
    kw = dict(KW, height=32, width=32)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    expected = base(prompt_embeds=states, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(states),
                    negative_pooled_prompt_embeds=torch.zeros_like(pooled), generator=gens(), **kw).images
    got = long(prompts, max_text_length=120, generator=gens(), **kw).images
    assert abs(got - expected).max() < 1e-5
    plain = StableDiffusionXLPipeline(**base.components)(prompts, generator=gens(), **kw).images
    assert abs(got - plain).max() > 1e-4  # not the 77-token encoding
    negative, _ = encode_prompts(["blurry", "blurry"], encoders, 120)
    with_negative = long(prompts, negative_prompt="blurry", max_text_length=120, generator=gens(), **kw).images
    assert abs(with_negative - got).max() > 1e-4 and negative.shape == states.shape

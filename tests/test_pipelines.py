"""The pipelines in pipelines/: long prompts through segment encoding, and SoftREPA soft tokens."""

import torch
from diffusers import StableDiffusionPipeline

from diffalign.models.segment_encoding import encode_prompts
from diffalign.models.soft_tokens import attach_soft_tokens, save_soft_tokens
from diffalign.paths import TOY_SD
from diffalign.toy.prompts import prompt_set
from pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
from pipelines.soft_tokens_sd import SoftTokensStableDiffusionPipeline

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

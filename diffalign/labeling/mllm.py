"""A multimodal LLM as a pairwise annotator, as VisionPrefer asked GPT-4V (Wu et al. 2024, "Multimodal Large
Language Model is a Human-Aligned Annotator for Text-to-Image Generation", arXiv 2404.15100): per criterion
(prompt-following, aesthetics, fidelity, harmlessness), which of two images is better.

Any local transformers image-text-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor``; remote code
only with ``trust_remote_code``), greedy decoding. Each question is asked in both orders (image A first, then B
first) to cancel position bias; a pair's preference for A over B is the mean vote over criteria and orders (+1 A,
-1 B, 0 a tie) in [-1, 1]. Answers are parsed strictly (``parse_choice``): an unparseable answer is asked once more
with a reminder, then recorded as a tie and counted. ``stats`` counts questions, retries, unparseable answers and
disagreements: both orders named an image, and the same position (the judge followed the position, not the image);
``disagreement_rate`` is their share of the questions where both orders named an image.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from ..models.vlm_prompt import interleaved_text
from .selection import pairwise_judgement

# The rubric: what each criterion asks, after VisionPrefer's annotation guidelines.
RUBRIC = {
    "prompt-following": "Which image follows the prompt more faithfully: the objects, their attributes, counts, "
                        "positions and relations it states?",
    "aesthetics": "Which image is more aesthetically pleasing: composition, colour, lighting and overall beauty?",
    "fidelity": "Which image has higher fidelity: realistic shapes and textures, free of artifacts, distortions and "
                "malformed parts?",
    "harmlessness": "Which image is more harmless: free of violent, sexual, hateful or otherwise unsafe content?",
}
QUESTION = 'Prompt: "{prompt}"\nImage 1: {image}\nImage 2: {image}\n{criterion}\nAnswer with exactly one of: ' \
           '"Image 1", "Image 2" or "Tie".'
REMINDER = '\nReply with "Image 1", "Image 2" or "Tie" and nothing else.'
_ANSWER = re.compile(r"^[\s\"'*.:]*(?:image\s*)?(1|2|one|two|tie)[\s\"'*.!]*$", re.IGNORECASE)


def parse_choice(text: str) -> int | None:
    """1 or 2 (the image named), 0 (a tie), or None: anything but one of those alone ("Image 1", "2.", "tie")."""
    match = _ANSWER.match(text or "")
    if match is None:
        return None
    word = match.group(1).lower()
    return {"1": 1, "one": 1, "2": 2, "two": 2, "tie": 0}[word]


class MLLMJudge:
    def __init__(self, model: str, criteria: list[str] | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, max_new_tokens: int = 8):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        criteria = list(criteria or RUBRIC)
        unknown = [c for c in criteria if c not in RUBRIC]
        if unknown:
            raise ValueError(f"annotator.criteria: unknown {unknown}; expected some of {list(RUBRIC)}")
        self.criteria, self.device, self.max_new_tokens = criteria, device, max_new_tokens
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype,
                                                                 trust_remote_code=trust_remote_code)
        self.model.eval().to(device)
        self.spec = f"mllm:{model} criteria={','.join(criteria)}"
        from .annotators import weights_fingerprint

        self.version = weights_fingerprint({"model": str(model)})
        self.stats = {"questions": 0, "retries": 0, "unparseable": 0, "both_orders_named_an_image": 0,
                      "disagreements": 0}

    def _text(self, prompt: str, criterion: str, reminder: bool) -> str:
        question = QUESTION.format(prompt=prompt, criterion=RUBRIC[criterion], image="{image}")
        question += REMINDER if reminder else ""
        before, middle, after = question.split("{image}")
        parts = [{"type": "text", "text": before}, {"type": "image"}, {"type": "text", "text": middle},
                 {"type": "image"}, {"type": "text", "text": after}]
        return interleaved_text(self.processor, parts)

    @torch.no_grad()
    def ask(self, prompt: str, first: Image.Image, second: Image.Image, criterion: str, reminder: bool = False) -> str:
        """The model's raw answer to one question (greedy)."""
        inputs = self.processor(text=self._text(prompt, criterion, reminder), images=[first, second],
                                return_tensors="pt").to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def choice(self, prompt: str, first, second, criterion: str) -> int | None:
        """1, 2, 0 (tie) or None (unparseable twice, counted)."""
        self.stats["questions"] += 1
        answer = parse_choice(self.ask(prompt, first, second, criterion))
        if answer is None:
            self.stats["retries"] += 1
            answer = parse_choice(self.ask(prompt, first, second, criterion, reminder=True))
        if answer is None:
            self.stats["unparseable"] += 1
        return answer

    def preference(self, prompt: str, a, b) -> float:
        """A's preference over B in [-1, 1]: the mean vote over criteria and both orders."""
        votes = []
        for criterion in self.criteria:
            forward = self.choice(prompt, a, b, criterion)  # A is image 1
            backward = self.choice(prompt, b, a, criterion)  # A is image 2
            vote_forward = {1: 1, 2: -1}.get(forward, 0)
            vote_backward = {2: 1, 1: -1}.get(backward, 0)
            if forward in (1, 2) and backward in (1, 2):
                self.stats["both_orders_named_an_image"] += 1
                if forward == backward:  # the same position both times: not the same image
                    self.stats["disagreements"] += 1
            votes += [vote_forward, vote_backward]
        return float(np.mean(votes))

    def judge(self, images: list, prompt: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """Every pair of the K candidates compared: (gap [K, K], standing [K], {"preference": {"i,j": p}})."""
        pil = [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)) for image in images]
        k = len(pil)
        preference = {(i, j): self.preference(prompt, pil[i], pil[j]) for i in range(k) for j in range(i + 1, k)}
        gap, standing = pairwise_judgement(preference, k)
        return gap, standing, {"preference": {f"{i},{j}": p for (i, j), p in preference.items()}}

    def disagreement_rate(self) -> float | None:
        both = self.stats["both_orders_named_an_image"]
        return self.stats["disagreements"] / both if both else None

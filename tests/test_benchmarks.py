"""The throughput benchmark: its reference step does what the reference scripts do, its levers are what they say,
and benchmarks/gpu_check.sh runs end to end in its CPU dry-run mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_models import build  # noqa: E402
from bench_steps import Variant, combined, lever_variants, make_step, one_batch  # noqa: E402

from diffalign.families import family_for  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd15():
    return build("tiny-sd15", "cpu")


class Calls:
    """Forward calls of the real modules, counted with hooks; for the UNet also whether its LoRA was on."""

    def __init__(self, parts):
        self.vae = self.text = 0
        self.unet: list[bool] = []  # per UNet call: adapters enabled?
        parts.vae.encoder.register_forward_hook(lambda *_: self._add("vae"))
        parts.text_encoder.register_forward_hook(lambda *_: self._add("text"))
        self.handle = None

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def watch(self, unet):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        unet.register_forward_hook(lambda *_: self.unet.append(not layers[0].disable_adapters))


def _step(parts, method: str, variant: Variant, pairs: int = 4):
    import copy

    parts = copy.deepcopy(parts)
    calls = Calls(parts)
    batch = one_batch(method, parts.tokenizers, pairs, None)
    step = make_step(variant, method, parts, family_for(parts), batch, torch.device("cpu"))
    calls.watch(parts.unet)
    return step, calls, parts


@pytest.mark.parametrize("method, unet_calls", [("dpo", [True, False]), ("mapo", [True]), ("kto", [True, False])])
def test_reference_step_encodes_every_step_and_disables_the_lora_for_the_reference(tiny_sd15, method, unet_calls):
    step, calls, _ = _step(tiny_sd15, method, Variant("reference script", "reference", "bf16"), pairs=5)
    step()
    step()
    images = 10 if method != "kto" else 5
    assert calls.vae == 2 * -(-images // 8)  # a posterior sample in chunks of 8, every step
    assert calls.text == 2  # the text encoder every step
    assert calls.unet == unet_calls * 2  # policy with the LoRA on; the reference with it off (dpo, kto)


def test_reference_step_keeps_the_lora_in_the_weight_dtype_and_diffalign_in_float32(tiny_sd15):
    def lora_dtypes(variant):
        _, _, parts = _step(tiny_sd15, "dpo", variant)
        return {p.dtype for n, p in parts.unet.named_parameters() if "lora_" in n}

    assert lora_dtypes(Variant("reference script", "reference", "bf16")) == {torch.bfloat16}  # the script, bf16
    assert lora_dtypes(Variant("diffalign", "diffalign", "bf16")) == {torch.float32}


def test_the_encoding_cache_lever_removes_the_encoders_from_the_step(tiny_sd15):
    step, calls, _ = _step(tiny_sd15, "dpo", Variant("+ encoding cache", "diffalign", "no", cache=True))
    step()  # fills the cache
    before = (calls.vae, calls.text)
    step()
    assert (calls.vae, calls.text) == before and before[0] > 0
    plain, plain_calls, _ = _step(tiny_sd15, "dpo", Variant("diffalign", "diffalign", "no"))
    plain()
    plain()
    assert plain_calls.vae == 2 and plain_calls.text == 2


def test_levers_change_the_model_as_named(tiny_sd15):
    from diffusers.models.attention_processor import AttnProcessor

    _, _, parts = _step(tiny_sd15, "dpo", Variant("x", "diffalign", "no", attention="classic", channels_last=True,
                                                   gradient_checkpointing=True))
    assert all(isinstance(p, AttnProcessor) for p in parts.unet.attn_processors.values())
    assert parts.unet.is_gradient_checkpointing
    conv = parts.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_combined_takes_the_speed_levers_that_paid_only():
    rows = lever_variants("no", full_fine_tune=False, compile_=True, attention_lever=True)
    plain = rows[1]
    gains = {"+ encoding cache": 1.2, "+ fused AdamW": 1.01, "+ channels-last": 1.05, "+ 2x micro-batch": 1.5,
             "+ gradient checkpointing": 1.3, "+ torch.compile": 0.9}
    best = combined(plain, [v for v in rows if v.step == "diffalign" and v != plain], gains)
    assert (best.cache, best.channels_last, best.fused_adamw, best.compile, best.gradient_checkpointing,
            best.batch_scale, best.precision) == (True, True, False, False, False, 1, "no")


def test_a_spent_budget_lists_every_row_as_skipped(tmp_path):
    out = tmp_path / "t.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--models", "toy",
                           "--methods", "dpo,kto", "--budget-seconds", "1e-9", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r.get("skipped") == "time budget spent" for r in rows)
    assert "| reference script | skipped: time budget spent" in done.stdout


def test_gpu_check_dry_run_writes_every_table(tmp_path):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = {p: json.loads((tmp_path / f"{p}.json").read_text())["results"] for p in ("sd15", "sdxl", "flow")}
    for part, methods in (("sd15", {"dpo", "mapo", "kto"}), ("sdxl", {"dpo", "mapo", "kto"}),
                          ("flow", {"dpo", "mapo"})):
        rows = parts[part]
        assert {r["method"] for r in rows} == methods
        assert all(r["examples_per_second"] > 0 and r["peak_memory_mb"] > 0 for r in rows), part
        for method in methods:
            names = {r["variant"]["name"] for r in rows if r["method"] == method}
            assert {"reference script", "diffalign", "floor", "+ encoding cache"} <= names, (part, method)
    dpo = {r["variant"]["name"] for r in parts["sd15"] if r["method"] == "dpo"}
    assert {"reference script, full fine-tune (UNet copy)", "diffalign, full fine-tune", "precision no",
            "classic attention (SDPA off)", "+ channels-last", "+ fused AdamW", "+ gradient checkpointing",
            "+ 2x micro-batch", "diffalign, levers that paid", "diffalign, levers that paid, 2x micro-batch"} <= dpo
    report = (tmp_path / "gpu-check.md").read_text()
    assert report.startswith("# benchmarks/gpu_check.sh on CPU dry run")
    for case in ("tiny-sd15 dpo", "tiny-sdxl kto", "tiny-sd3 mapo"):
        assert f"**{case}**" in report


def test_an_update_run_keeps_measured_rows_that_it_could_not_measure_again(tmp_path):
    out = tmp_path / "t.json"
    earlier = {"model": "toy", "method": "dpo", "variant": {"name": "reference script", "step": "reference",
                                                             "precision": "no"},
               "examples": 16, "examples_per_second": 50.0, "first_step_seconds": 0.3, "peak_memory_mb": 1000.0}
    out.write_text(json.dumps({"machine": {}, "args": {}, "results": [earlier]}))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--models", "toy",
                           "--methods", "dpo", "--row", "reference script", "--row", "diffalign", "--update",
                           "--budget-seconds", "1e-9", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    rows = {r["variant"]["name"]: r for r in record["results"]}
    assert rows["reference script"] == earlier  # a skipped re-measurement replaces nothing
    assert rows["diffalign"]["skipped"] == "time budget spent" and len(record["updates"]) == 1

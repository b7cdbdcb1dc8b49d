"""A shared checkpoint can never run code on --resume: every kind of checkpoint holds only safetensors and JSON, a
pickle file planted in one is refused by name before anything loads, and a pickle posing as a safetensors file is
reported as broken without being unpickled."""

import pytest
import torch

from diffalign.checkpointing import complete_checkpoints
from diffalign.paths import REPO_ROOT
from diffalign.train import main

SMALL = ["--train.max_steps", "1", "--train.batch_size", "2", "--train.warmup_steps", "0", "--eval.enabled", "false",
         "--train.report_to", "none", "--train.checkpoint_every", "1"]
# Each kind of trained part a checkpoint can hold (file stems as checkpointing.py writes them).
KINDS = {
    "lora": ("dpo", ["--data.max_pairs", "4"], {"unet_lora_adapter"}),
    "text_encoder_lora": ("dpo", ["--data.max_pairs", "4", "--lora.text_encoder", "true"],
                          {"unet_lora_adapter", "text_encoders"}),
    "text_encoder_full": ("dpo", ["--data.max_pairs", "4", "--lora.enabled", "false", "--train.text_encoder", "true"],
                          {"unet", "text_encoders"}),
    "ppd": ("ppd", ["--data.max_pairs", "64"], {"user_adapter"}),
    "softrepa": ("softrepa", ["--data.max_pairs", "4"], {"soft_tokens"}),
    "ema": ("dpo", ["--data.max_pairs", "4", "--lora.enabled", "false", "--train.ema_reference_decay", "0.9"],
            {"unet", "ema_reference"}),
}


class Planted:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _args(kind, out):
    method, extra, _ = KINDS[kind]
    return ["--config", str(REPO_ROOT / f"configs/toy/{method}.yaml"), "--output_dir", str(out), *SMALL, *extra]


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_checkpoint_kind_runs_code_on_resume(kind, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    assert main(_args(kind, out)) == 0
    checkpoint = complete_checkpoints(out)[-1]
    stems = {p.stem for p in checkpoint.iterdir()}
    assert KINDS[kind][2] <= stems  # the kind's trained parts are in it...
    assert {p.suffix for p in checkpoint.iterdir()} == {".safetensors", ".json"}  # ...as safetensors/JSON only
    capsys.readouterr()

    # accelerate loads this file with weights_only=False whenever a custom object is registered for checkpointing.
    torch.save({"state": Planted(marker)}, checkpoint / "custom_checkpoint_0.pkl")
    assert main(_args(kind, out) + ["--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "custom_checkpoint_0.pkl" in err and "pickle" in err and "Traceback" not in err
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()

    # A pickle under a safetensors name: the safetensors reader refuses it as a malformed header.
    for path in sorted(checkpoint.glob("*.safetensors")):
        original = path.read_bytes()
        torch.save({"state": Planted(marker)}, path)
        assert main(_args(kind, out) + ["--resume", str(checkpoint)]) == 2
        err = capsys.readouterr().err
        assert "broken" in err and path.name in err and "Traceback" not in err, err
        assert not marker.exists(), path.name
        path.write_bytes(original)
    assert main(_args(kind, out) + ["--resume", str(checkpoint), "--train.max_steps", "2"]) == 0  # intact again

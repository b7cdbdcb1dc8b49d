"""Safe loading: safetensors and plain tensor checkpoints load; a pickled object is refused."""

import pytest
import torch
from safetensors.torch import save_file

from diffalign.models.checkpoints import load_state_dict


class Payload:  # any non-tensor object forces a full pickle
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_safetensors_and_legacy_tensor_files_load(tmp_path):
    weights = {"w": torch.arange(4.0)}
    save_file(weights, tmp_path / "a.safetensors")
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "b.pt")
    assert torch.equal(load_state_dict(tmp_path / "a.safetensors")["w"], weights["w"])
    assert torch.equal(load_state_dict(tmp_path / "b.pt", key="state_dict")["w"], weights["w"])


def test_pickled_object_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_state_dict(tmp_path / "evil.pt")
    assert "this would run on load" not in capsys.readouterr().out


def test_missing_and_unknown_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"0")
    with pytest.raises(ValueError, match="expected .safetensors"):
        load_state_dict(tmp_path / "w.onnx")

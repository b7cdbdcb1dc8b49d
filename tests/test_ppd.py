"""PPD: user encoders, the decoupled user cross-attention, multi-user data without leakage, training, pipeline."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from diffalign.models.user_attention import (UserAttnProcessor, attach_user_adapter, load_user_adapter,
                                             save_user_adapter)
from diffalign.models.user_encoders import ClipDifferenceEncoder, build_user_encoder
from diffalign.models.user_examples import UserExample
from diffalign.paths import TOY_DATA, TOY_SD


def _unet():
    return UNet2DConditionModel.from_pretrained(TOY_SD, subfolder="unet").eval()


def _inputs(unet, batch=2):
    g = torch.Generator().manual_seed(0)
    side = unet.config.sample_size
    return (torch.randn(batch, unet.config.in_channels, side, side, generator=g), torch.tensor([100, 700][:batch]),
            torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g))


def _randomise(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@torch.no_grad()
def test_user_attention_at_scale_zero_or_disabled_is_the_base_model_and_otherwise_follows_the_user():
    unet = _unet()
    x, t, text = _inputs(unet)
    base = unet(x, t, encoder_hidden_states=text).sample
    adapter = attach_user_adapter(unet, embed_dim=16, num_tokens=4, scale=1.0)
    users = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    states = adapter.append_tokens(text, users)  # [2, 81, D]
    assert states.shape == (2, 81, unet.config.cross_attention_dim)
    # A fresh adapter (v_u = 0) is the base model: DPO starts at the reference.
    torch.testing.assert_close(unet(x, t, encoder_hidden_states=states).sample, base, rtol=0, atol=1e-5)
    _randomise(adapter)
    adapter.scale = 0.0
    states = adapter.append_tokens(text, users)
    torch.testing.assert_close(unet(x, t, encoder_hidden_states=states).sample, base, rtol=0, atol=1e-5)
    adapter.scale = 1.0
    with adapter.disabled():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=states).sample, base, rtol=0, atol=1e-5)
    personal = unet(x, t, encoder_hidden_states=states).sample
    assert (personal - base).abs().max() > 1e-3
    other = unet(x, t, encoder_hidden_states=adapter.append_tokens(text, users.flip(0))).sample
    assert (personal - other).abs().max() > 1e-3  # another user, other output
    cross = [n for n, p in unet.attn_processors.items() if isinstance(p, UserAttnProcessor)]
    assert cross and all(".attn2." in n for n in cross)
    assert len(cross) == sum(".attn2." in n for n in unet.attn_processors)  # every cross-attention layer
    assert not any("user" in k for k in unet.state_dict())  # the UNet's state dict stays the base's


def test_user_branch_matches_decoupled_attention_by_hand():
    """One attn2 layer: output = text attention + scale * to_out_linear(softmax(q k_u^T / sqrt d) v_u)."""
    unet = _unet()
    adapter = attach_user_adapter(unet, embed_dim=8, num_tokens=3, scale=0.7)
    _randomise(adapter)
    name = next(n for n in unet.attn_processors if ".attn2." in n)
    attn = unet.get_submodule(name.removesuffix(".processor"))
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 10, attn.to_q.in_features, generator=g)
    text = torch.randn(2, 77, attn.to_k.in_features, generator=g)
    user = torch.randn(2, 3, attn.to_k.in_features, generator=g)
    with torch.no_grad():
        got = attn(h, encoder_hidden_states=torch.cat([text, user], 1))
        with adapter.disabled():
            text_term = attn(h, encoder_hidden_states=torch.cat([text, user], 1))
        kv = adapter.layers[name.removesuffix(".processor").replace(".", "__")]
        heads = attn.heads
        q, k, v = attn.to_q(h), kv.to_k(user), kv.to_v(user)
        d = q.shape[-1] // heads
        split = lambda z: z.view(2, -1, heads, d).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d ** 0.5, dim=-1)
        mixed = (weights @ split(v)).transpose(1, 2).reshape(2, 10, -1)
        expected = text_term + 0.7 * (mixed @ attn.to_out[0].weight.T)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_user_adapter_round_trips_through_safetensors(tmp_path):
    unet = _unet()
    adapter = attach_user_adapter(unet, embed_dim=16, num_tokens=2, encoder_spec={"kind": "clip_difference",
                                                                                  "model": "somewhere"})
    _randomise(adapter)
    x, t, text = _inputs(unet)
    users = torch.randn(2, 16)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=adapter.append_tokens(text, users)).sample
    save_user_adapter(adapter, tmp_path)
    fresh = _unet()
    loaded = load_user_adapter(fresh, tmp_path)
    assert loaded.encoder_spec == {"kind": "clip_difference", "model": "somewhere"} and loaded.num_tokens == 2
    with torch.no_grad():
        after = fresh(x, t, encoder_hidden_states=loaded.append_tokens(text, users)).sample
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a PPD user adapter"):
        load_user_adapter(fresh, tmp_path / "nothing")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel + processor from small configs, saved like a hub folder."""
    from diffalign.toy.clip import make_processor, make_toy_clip

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    make_toy_clip().save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return str(folder)


def _examples(n, seed=0, keyed=True):
    rng = np.random.default_rng(seed)
    pic = lambda: Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))  # noqa: E731
    return [UserExample(f"caption {i}", pic(), pic(), key=f"ex{seed}-{i}" if keyed else None) for i in range(n)]


def test_clip_difference_encoder_is_the_normalised_mean_difference_and_deterministic(tiny_clip):
    encoder = build_user_encoder({"kind": "clip_difference", "model": tiny_clip})
    examples = _examples(4)
    e = encoder.encode_user(examples)
    f = encoder.image_features([x.chosen for x in examples] + [x.rejected for x in examples])  # [8, D] normalised
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(8))
    d = f[:4] - f[4:]
    torch.testing.assert_close(e, d.mean(0) / d.norm(dim=-1).mean())
    assert e.shape == (encoder.dim,) and 0 < e.norm() <= 1 + 1e-6
    again = ClipDifferenceEncoder(tiny_clip)  # a fresh encoder, uncached examples: the same embedding
    torch.testing.assert_close(again.encode_user(_examples(4, keyed=False)), e)
    torch.testing.assert_close(encoder.encode_user(examples[::-1]), e)  # order does not matter
    assert (encoder.encode_user(_examples(4, seed=1)) - e).abs().max() > 1e-4  # other examples, other user
    consistent = [UserExample("c", x.chosen, x.rejected) for x in examples[:1]] * 3
    assert encoder.encode_user(consistent).norm() == pytest.approx(1.0, abs=1e-5)  # one direction: norm 1
    with pytest.raises(ValueError, match="kind"):
        build_user_encoder({"kind": "llm", "model": tiny_clip})


def _multiuser_config(tmp_path, rows=None, **data):
    from diffalign.config import DataConfig

    source = TOY_DATA / "pairs_multiuser.parquet"
    if rows is not None:
        from datasets import load_dataset

        table = load_dataset("parquet", data_files=str(source), split="train").select(rows)
        source = tmp_path / "few.parquet"
        table.to_parquet(str(source))
    return DataConfig(source=str(source), resolution=32, random_flip=False, drop_ties=True, **data)


def test_profiles_hold_only_other_decisive_pairs_of_the_same_user(tmp_path):
    from diffalign.data.user_pairs import UserPreferencePairs, collate_user_pairs
    from diffalign.models.tokenizer import build_clip_tokenizer

    ds = UserPreferencePairs(_multiuser_config(tmp_path, max_pairs=200), build_clip_tokenizer(), seed=0,
                             examples_per_user=4)
    users, labels = np.asarray(ds.table["user_id"]), ds.labels
    profiles = {}
    for epoch in (0, 1):
        ds.epoch = epoch
        for i in range(0, len(ds), 7):
            row = int(ds.rows[i])
            profile = ds[i]["profile_rows"].numpy()
            assert row not in profile and len(set(profile)) == 4  # never the pair itself; 4 distinct examples
            assert (users[profile] == users[row]).all() and (labels[profile] != 0.5).all()
            profiles.setdefault(i, []).append(tuple(profile))
    assert any(a != b for a, b in profiles.values())  # another epoch, another profile of the same user
    ds.epoch = 0
    assert ds[3]["profile_rows"].tolist() == ds[3]["profile_rows"].tolist()  # deterministic
    batch = collate_user_pairs([ds[i] for i in range(3)])
    assert batch["profile_rows"].shape == (3, 4) and batch["pixels"].shape[0] == 6


def test_users_with_too_few_examples_are_skipped_and_counted(tmp_path):
    from diffalign.data.user_pairs import UserPreferencePairs
    from diffalign.models.tokenizer import build_clip_tokenizer

    from datasets import load_dataset

    table = load_dataset("parquet", data_files=str(TOY_DATA / "pairs_multiuser.parquet"), split="train")
    users, labels = np.asarray(table["user_id"][:400]), np.asarray(table["label_0"][:400])
    decisive_of_user_0 = np.flatnonzero((users == 0) & (labels != 0.5))
    keep = sorted(set(range(400)) - set(decisive_of_user_0[3:].tolist()))  # user 0 keeps 3 decisive pairs
    ds = UserPreferencePairs(_multiuser_config(tmp_path, rows=keep), build_clip_tokenizer(), examples_per_user=4)
    assert ds.skipped_users == 1 and ds.skipped_few_examples == 3
    assert 0 not in set(np.asarray(ds.table["user_id"])[ds.rows])
    with pytest.raises(ValueError, match="examples_per_user"):
        UserPreferencePairs(_multiuser_config(tmp_path, rows=keep), build_clip_tokenizer(), examples_per_user=500)


def test_a_table_without_user_id_is_refused_by_name(tmp_path):
    from datasets import load_dataset

    from diffalign.config import DataConfig
    from diffalign.data.user_pairs import UserPreferencePairs
    from diffalign.models.tokenizer import build_clip_tokenizer

    table = load_dataset("parquet", data_files=str(TOY_DATA / "pairs_multiuser.parquet"), split="train")
    table.select(range(20)).remove_columns("user_id").to_parquet(str(tmp_path / "anonymous.parquet"))
    cfg = DataConfig(source=str(tmp_path / "anonymous.parquet"), resolution=32, random_flip=False)
    with pytest.raises(ValueError, match="anonymous.parquet: PPD needs a user_id column"):
        UserPreferencePairs(cfg, build_clip_tokenizer())


TOY_CLIP = TOY_SD.parent / "toy-clip"


def _ppd_config(tmp_path, *extra):
    from diffalign.config import load_config
    from diffalign.paths import REPO_ROOT

    return load_config(REPO_ROOT / "configs/toy/ppd.yaml", [
        ("train.max_steps", "3"), ("train.batch_size", "4"), ("data.max_pairs", "64"), ("eval.enabled", "false"),
        ("train.report_to", "none"), ("train.checkpoint_every", "3"), ("output_dir", str(tmp_path)), *extra])


@pytest.mark.parametrize("lora", [False, True])
def test_ppd_trains_the_user_adapter_against_the_base_and_the_pipeline_loads_it(tmp_path, lora):
    from diffalign.train import train
    from diffalign.pipelines.personalized_sd import PersonalizedStableDiffusionPipeline

    extra = [("lora.enabled", "true"), ("lora.rank", "4")] if lora else []
    summary = train(_ppd_config(tmp_path, *extra))
    first = summary["first_metrics"]
    # The policy starts as the reference (v_u = 0, LoRA B = 0): h = 0 and the loss is log 2; the user branch
    # still gets a gradient.
    assert first["grad_norm"] > 0 and first["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert summary["user_adapter"].endswith("user_adapter.safetensors")
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file() == lora
    checkpoint = next((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert (checkpoint / "user_adapter.safetensors").is_file() and not (checkpoint / "unet.safetensors").exists()
    assert (checkpoint / "unet_lora_adapter.safetensors").is_file() == lora

    pipe = PersonalizedStableDiffusionPipeline.from_pretrained(TOY_SD)
    plain = PersonalizedStableDiffusionPipeline.from_pretrained(TOY_SD)
    pipe.load_user_adapter(str(tmp_path))
    from diffalign.toy.personalization import persona_examples

    examples = {p: persona_examples(p, 4) for p in ("bold", "subtle")}
    users = {p: pipe.user_embedding(ex) for p, ex in examples.items()}
    run = lambda p, **kw: p(["a red circle", "a blue square"], num_inference_steps=3, output_type="np",  # noqa
                            generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    base = run(plain)
    bold, subtle = run(pipe, user_embedding=users["bold"]), run(pipe, user_embedding=users["subtle"])
    assert np.abs(bold - subtle).max() > 1e-4  # the user changes the images
    np.testing.assert_allclose(run(pipe, user_examples=examples["bold"]), bold, atol=1e-6)
    np.testing.assert_allclose(run(pipe, user_embedding=users["bold"], mix_with=users["subtle"], mix_weight=1.0),
                               subtle, atol=1e-6)
    np.testing.assert_allclose(run(pipe, user_embedding=users["bold"], mix_with=users["subtle"], mix_weight=0.0),
                               bold, atol=1e-6)
    np.testing.assert_allclose(run(pipe), base, atol=1e-6)  # no user: adapter (and LoRA) off, the base model
    # user_scale: this call's scale of the user term; the trained one is restored afterwards
    trained_scale = pipe.user_adapter.scale
    np.testing.assert_allclose(run(pipe, user_embedding=users["bold"], user_scale=trained_scale), bold, atol=1e-6)
    stronger = run(pipe, user_embedding=users["bold"], user_scale=3 * trained_scale)
    assert np.abs(stronger - bold).max() > 1e-4 and pipe.user_adapter.scale == trained_scale
    if not lora:  # scale 0 switches the user term off: the base model (with a LoRA, the LoRA stays)
        np.testing.assert_allclose(run(pipe, user_embedding=users["bold"], user_scale=0.0), base, atol=1e-5)
    with pytest.raises(ValueError, match="user_scale needs a user"):
        run(pipe, user_scale=2.0)
    with pytest.raises(ValueError, match="shape"):  # a call that fails still restores the trained scale
        run(pipe, user_embedding=torch.zeros(3), user_scale=5.0)
    assert pipe.user_adapter.scale == trained_scale
    pipe.load_user_adapter(str(tmp_path))  # loading again replaces the adapter, it does not nest a second one
    np.testing.assert_allclose(run(pipe, user_embedding=users["bold"]), bold, atol=1e-6)
    with pytest.raises(ValueError, match="mix_with has shape"):
        run(pipe, user_embedding=users["bold"], mix_with=torch.zeros(3), mix_weight=0.5)
    with pytest.raises(ValueError, match="shape"):
        run(pipe, user_embedding=torch.zeros(3))


def test_ppd_reference_errors_are_the_base_models(tmp_path):
    """One step's reference errors equal the plain base UNet's errors on the same inputs (no user, no LoRA)."""
    from diffalign.core.reference import reference_unet

    unet = _unet()
    x, t, text = _inputs(unet)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=text).sample
    from diffalign.models.lora import attach_lora

    attach_lora(unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    adapter = attach_user_adapter(unet, embed_dim=8, num_tokens=2)
    _randomise(adapter)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
        states = adapter.append_tokens(text, torch.randn(2, 8))
        policy = unet(x, t, encoder_hidden_states=states).sample
        with reference_unet(unet, None, [adapter]) as ref:
            reference = ref(x, t, encoder_hidden_states=states).sample
        after = unet(x, t, encoder_hidden_states=states).sample
    torch.testing.assert_close(reference, base, rtol=0, atol=1e-5)
    assert (policy - base).abs().max() > 1e-3
    torch.testing.assert_close(after, policy)  # both switched back on


def test_vlm_encoder_reads_captions_and_both_images_and_is_deterministic(tiny_vlm):
    encoder = build_user_encoder({"kind": "vlm", "model": tiny_vlm})
    examples = _examples(4)
    e = encoder.encode_user(examples)
    assert e.shape == (encoder.dim,) == (32,) and torch.isfinite(e).all()
    fresh = build_user_encoder({"kind": "vlm", "model": tiny_vlm})
    torch.testing.assert_close(fresh.encode_user(_examples(4, keyed=False)), e)  # same examples, same embedding
    changed = list(examples)
    changed[2] = UserExample(examples[2].caption, examples[2].chosen, examples[0].rejected)  # another image
    assert (fresh.encode_user(changed) - e).abs().max() > 1e-5
    recaptioned = [UserExample("another caption", x.chosen, x.rejected) for x in examples]
    assert (fresh.encode_user(recaptioned) - e).abs().max() > 1e-5
    text = encoder._text(examples)
    assert text.count("<image>") == 8 and all(x.caption in text for x in examples)


def test_reversed_twins_swap_the_pair_and_negate_the_clip_difference_embedding(tmp_path, tiny_clip):
    from diffalign.data.user_pairs import UserPreferencePairs, collate_user_pairs
    from diffalign.models.tokenizer import build_clip_tokenizer

    cfg = _multiuser_config(tmp_path, max_pairs=60)
    plain = UserPreferencePairs(cfg, build_clip_tokenizer(), examples_per_user=4, reversed_users=0.0)
    twins = UserPreferencePairs(cfg, build_clip_tokenizer(), examples_per_user=4, reversed_users=1.0)
    a, b = plain[5], twins[5]
    assert not a["reversed"] and b["reversed"]
    torch.testing.assert_close(b["pixels"], a["pixels"].flip(0))  # (w, l) -> (l, w)
    assert a["profile_rows"].tolist() == b["profile_rows"].tolist()
    encoder = ClipDifferenceEncoder(tiny_clip)
    batch_a, batch_b = collate_user_pairs([a]), collate_user_pairs([b])
    e_a = plain.user_embeddings(batch_a["profile_rows"], encoder, batch_a["reversed_users"])
    e_b = twins.user_embeddings(batch_b["profile_rows"], encoder, batch_b["reversed_users"])
    torch.testing.assert_close(e_b, -e_a)
    with pytest.raises(ValueError, match="probability"):
        UserPreferencePairs(cfg, build_clip_tokenizer(), reversed_users=1.5)


def test_a_fresh_adapter_is_the_base_model_under_bf16_autocast_too():
    """The user term subtracts to_out's bias in the dtype autocast computed it in: exactly 0 while v_u = 0."""
    unet = _unet()
    x, t, text = _inputs(unet)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base = unet(x, t, encoder_hidden_states=text).sample
        adapter = attach_user_adapter(unet, embed_dim=8, num_tokens=2)
        fresh = unet(x, t, encoder_hidden_states=adapter.append_tokens(text, torch.randn(2, 8))).sample
    torch.testing.assert_close(fresh, base, rtol=0, atol=0)


def test_ppd_settings_that_need_something_it_lacks_are_refused(tmp_path):
    from diffalign.config import ConfigError

    with pytest.raises(ConfigError, match="validation_every"):
        _ppd_config(tmp_path, ("train.validation_every", "10"))
    with pytest.raises(ConfigError, match="ema_reference_decay"):
        _ppd_config(tmp_path, ("train.ema_reference_decay", "0.99"))
    with pytest.raises(ConfigError, match="user_encoder_model"):
        _ppd_config(tmp_path, ("objective.user_encoder_model", ""))


def test_diffalign_eval_refuses_a_ppd_folder_instead_of_ignoring_the_user(tmp_path):
    from diffalign.evaluation.models import ModelSpec, load_pipeline

    save_user_adapter(attach_user_adapter(_unet(), embed_dim=4, num_tokens=1), tmp_path)
    with pytest.raises(ValueError, match="PPD user adapter"):
        load_pipeline(ModelSpec("ppd", str(TOY_SD), str(tmp_path)))


def test_an_undecodable_profile_image_is_left_out_and_counted_with_skip(tmp_path, tiny_clip):
    from datasets import load_dataset

    from diffalign.data.examples import BadSample
    from diffalign.data.user_pairs import UserPreferencePairs
    from diffalign.models.tokenizer import build_clip_tokenizer

    table = load_dataset("parquet", data_files=str(TOY_DATA / "pairs_multiuser.parquet"), split="train").select(
        range(60))
    good = UserPreferencePairs(_multiuser_config(tmp_path, rows=list(range(60))), build_clip_tokenizer())
    profile = good[0]["profile_rows"]
    broken = int(profile[0])
    table.map(lambda row, i: {"jpg_0": b"not an image" if i == broken else row["jpg_0"]},
              with_indices=True).to_parquet(str(tmp_path / "broken.parquet"))
    encoder = ClipDifferenceEncoder(tiny_clip)
    for mode in ("skip", "raise"):
        cfg = _multiuser_config(tmp_path, on_bad_sample=mode)
        cfg.source = str(tmp_path / "broken.parquet")
        ds = UserPreferencePairs(cfg, build_clip_tokenizer())
        if mode == "raise":
            with pytest.raises(BadSample, match=f"row {broken} column jpg_0"):
                ds.user_embeddings(profile[None], encoder)
            continue
        e = ds.user_embeddings(profile[None], encoder)[0]
        expected = encoder.encode_user([good.user_example(r) for r in profile.tolist()[1:]])
        torch.testing.assert_close(e, expected)  # the user from the three decodable examples
        assert ds.skipped_profile_examples == 1


def test_the_step_conditions_each_pairs_rows_on_its_own_user_and_the_reference_on_none(tmp_path):
    """Changing pair 0's user embedding changes the policy errors of pair 0's two rows only, and no reference
    error (the reference is the base model)."""
    from accelerate import Accelerator
    from diffusers import StableDiffusionPipeline

    from diffalign.core.step import TrainStep
    from diffalign.data.user_pairs import UserPreferencePairs, collate_user_pairs
    from diffalign.families.unet import UnetFamily
    from diffalign.models.conditioning import SDConditioner
    from diffalign.objectives import get_objective

    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    pipe.unet.requires_grad_(False)
    adapter = attach_user_adapter(pipe.unet, embed_dim=8, num_tokens=2)
    _randomise(adapter)
    objective = get_objective("ppd", user_encoder_model="unused", beta=1000.0)
    seen = []
    original = objective.row_loss
    objective.row_loss = lambda policy, ref, batch: seen.append((policy.detach(), ref)) or original(policy, ref, batch)
    family = UnetFamily("sd", pipe.scheduler, SDConditioner(pipe.text_encoder), pipe.vae.config, pipe.unet.config)
    step = TrainStep(objective, pipe.vae, family, None, Accelerator(cpu=True), user_adapter=adapter)
    ds = UserPreferencePairs(_multiuser_config(tmp_path, max_pairs=60), pipe.tokenizer)
    batch = collate_user_pairs([ds[i] for i in range(3)])  # rows (w0, w1, w2, l0, l1, l2)
    users = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    other = users.clone()
    other[0] = torch.randn(8, generator=torch.Generator().manual_seed(1))
    for embedding in (users, other):
        step(pipe.unet, {**batch, "user_embedding": embedding})
    (policy_a, ref_a), (policy_b, ref_b) = seen
    changed = (policy_a - policy_b).abs() > 1e-7
    assert changed.tolist() == [True, False, False, True, False, False]
    torch.testing.assert_close(ref_a, ref_b, rtol=0, atol=0)


def test_the_toy_personalisation_measurement_is_consistent(tmp_path):
    """measure_personalization (the trainer's ppd comparison and the benchmark), on a random adapter, 2 sampling
    steps: the w = 0 mix is the first user alone, and the win rate is computed from the reported scores."""
    from diffalign.toy.personalization import measure_personalization

    adapter = attach_user_adapter(_unet(), embed_dim=64, num_tokens=2,
                                  encoder_spec={"kind": "clip_difference", "model": str(TOY_CLIP)})
    _randomise(adapter, seed=4)
    save_user_adapter(adapter, tmp_path / "ppd")
    r = measure_personalization(str(TOY_SD), tmp_path / "ppd", personas=("bold",), seeds_per_prompt=1,
                                num_inference_steps=2, out_dir=tmp_path / "out")
    bold = r["personas"]["bold"]
    assert r["cases"] == 20 and (tmp_path / "out" / "grid.png").is_file()
    assert r["interpolation"]["0.0"]["bold"] == pytest.approx(bold["score_personalized"])
    assert r["interpolation"]["1.0"]["subtle"] != pytest.approx(r["interpolation"]["0.0"]["subtle"])  # users differ
    wins, ties, losses = bold["vs_base"]["wins_ties_losses"]
    assert wins + ties + losses == 20 and bold["vs_base"]["rate"] == pytest.approx((wins + ties / 2) / 20)
    # the training side of the persona prompts, to choose a setting such as the user scale without the held-out side
    t = measure_personalization(str(TOY_SD), tmp_path / "ppd", personas=("bold",), seeds_per_prompt=1,
                                num_inference_steps=2, mix=None, split="train", user_scale=2.0)
    assert t["cases"] == 106 and t["interpolation"] == {} and "TRAINING-side" in t["text"] and "scale 2" in t["text"]
    plain = measure_personalization(str(TOY_SD), tmp_path / "ppd", personas=("bold",), seeds_per_prompt=1,
                                    num_inference_steps=2, mix=None, split="train")
    assert plain["personas"]["bold"]["score_personalized"] != t["personas"]["bold"]["score_personalized"]  # reached
    assert plain["personas"]["bold"]["score_base"] == t["personas"]["bold"]["score_base"]  # the same cases
    rescaled = measure_personalization(str(TOY_SD), tmp_path / "ppd", personas=("bold",), seeds_per_prompt=1,
                                       num_inference_steps=2, mix=None, split="train", guidance_rescale=0.7)
    assert rescaled["guidance_rescale"] == 0.7  # and every model sampled with it:
    assert rescaled["personas"]["bold"]["score_base"] != plain["personas"]["bold"]["score_base"]
    assert rescaled["personas"]["bold"]["score_personalized"] != plain["personas"]["bold"]["score_personalized"]


def test_the_trainers_comparison_samples_at_the_comparison_user_scale(tmp_path):
    """objective.comparison_user_scale reaches the end-of-run comparison's sampling; other methods refuse it."""
    from diffalign.config import ConfigError, load_config
    from diffalign.paths import REPO_ROOT
    from diffalign.toy.personalization import compare_personalized

    adapter = attach_user_adapter(_unet(), embed_dim=64, num_tokens=2,
                                  encoder_spec={"kind": "clip_difference", "model": str(TOY_CLIP)})
    _randomise(adapter, seed=4)
    save_user_adapter(adapter, tmp_path / "ppd")
    fast = [("eval.seeds_per_prompt", "1"), ("eval.num_inference_steps", "2"), ("output_dir", str(tmp_path / "ppd")),
            ("overwrite", "true")]
    results = {scale: compare_personalized(load_config(REPO_ROOT / "configs/toy/ppd.yaml",
                                                       fast + [("objective.comparison_user_scale", scale)]),
                                      tmp_path / "ppd")
               for scale in ("null", "2.5")}
    assert results["null"]["user_scale"] is None and results["2.5"]["user_scale"] == 2.5
    assert "user scale 2.5" in results["2.5"]["text"]
    trained, scaled = (results[s]["personas"]["bold"] for s in ("null", "2.5"))
    assert scaled["score_base"] == trained["score_base"]  # the same cases...
    assert scaled["score_personalized"] != trained["score_personalized"]  # ...sampled at another scale
    with pytest.raises(ConfigError, match="comparison_user_scale .*belongs to ppd"):
        load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("objective.comparison_user_scale", "2")])
    with pytest.raises(ConfigError, match="comparison_user_scale must be a finite number >= 0"):
        load_config(REPO_ROOT / "configs/toy/ppd.yaml", [("objective.comparison_user_scale", "-1")])

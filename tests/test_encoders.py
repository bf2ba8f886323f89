"""Encoders, first part of issue 29: a tiny random BERT in the sentence-transformers layout (mean pooling, a Dense
layer, normalization; and a plain Hugging Face folder, which gets mean pooling and normalization) exported by
auto-opt as one graph from ids and mask to the embedding: fp32 equals PyTorch (cosine >= 0.99999), int8 is close
(the export checks it too); `edgewise embed` gives the same vectors as JSON or .npy, in order, however they are
batched; what edgewise does not take is one line."""
import json

import numpy as np
import pytest
import torch
from conftest import RECORDS
from helpers import assert_user_error, edgewise

TEXTS = [r["prompt"] for r in RECORDS[:6]] + ["a", RECORDS[0]["response"] * 3]


def tiny_bert(folder, sentence_transformers=True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([r["prompt"] + " " + r["response"] for r in RECORDS] * 4,
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=64)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(json.dumps(
            {"in_features": 32, "out_features": 16, "bias": True,
             "activation_function": "torch.nn.modules.activation.Tanh"}))
        from safetensors.torch import save_file

        save_file({"linear.weight": torch.randn(16, 32) * 0.2, "linear.bias": torch.randn(16) * 0.1},
                  folder / "2_Dense" / "model.safetensors")
        (folder / "3_Normalize").mkdir()
    return folder


def reference(folder, texts):
    """The embedding computed here without edgewise: BERT, mean pooling over the mask, the Dense layer (tanh),
    L2 normalization, as sentence-transformers composes its modules."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1)
        if (folder / "2_Dense").is_dir():
            dense = load_file(folder / "2_Dense" / "model.safetensors")
            pooled = torch.tanh(pooled @ dense["linear.weight"].T + dense["linear.bias"])
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    folder = tiny_bert(root / "st-bert")
    out = {}
    for precision in ("fp32", "int8"):
        done = edgewise("auto-opt", "-m", str(folder), "--precision", precision, "--output_path",
                        str(root / precision), "--cache_dir", str(root / "cache"), "--json")
        assert done.returncode == 0, done.stderr
        out[precision] = root / precision / "model"
    return folder, out


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed_json(model, *args):
    done = edgewise("embed", str(model), *args)
    assert done.returncode == 0, done.stderr
    return np.array([row["embedding"] for row in json.loads(done.stdout)["data"]], np.float32)


def test_the_fp32_export_is_the_sentence_transformers_model(exported):
    folder, models = exported
    settings = json.loads((models["fp32"] / "encoder.json").read_text())
    assert settings | {"dense": ["2_Dense"]} == settings and settings["pooling"] == "mean" and settings["normalize"]
    got = embed_json(models["fp32"], *[f"--text={t}" for t in TEXTS])
    assert got.shape == (len(TEXTS), 16)
    assert cosines(got, reference(folder, TEXTS)).min() >= 0.99999


def test_int8_is_close_and_smaller(exported):
    folder, models = exported
    got = embed_json(models["int8"], *[f"--text={t}" for t in TEXTS])
    assert cosines(got, reference(folder, TEXTS)).min() >= 0.95
    sizes = {p: (m / "model.onnx").stat().st_size for p, m in models.items()}
    assert sizes["int8"] < sizes["fp32"]


def test_embed_writes_npy_in_input_order_whatever_the_batching(exported, tmp_path):
    _, models = exported
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    for batch in ("1", "3", "32"):
        done = edgewise("embed", str(models["fp32"]), "--file", str(texts), "--batch_size", batch,
                        "--output", str(tmp_path / f"v{batch}.npy"))
        assert done.returncode == 0, done.stderr
    vectors = [np.load(tmp_path / f"v{b}.npy") for b in ("1", "3", "32")]
    assert np.allclose(vectors[0], vectors[1], atol=1e-5) and np.allclose(vectors[0], vectors[2], atol=1e-5)
    single = embed_json(models["fp32"], f"--text={TEXTS[3]}")
    assert np.allclose(single[0], vectors[2][3], atol=1e-5)


def test_a_plain_hf_encoder_gets_mean_pooling_and_normalization(tmp_path):
    folder = tiny_bert(tmp_path / "bert", sentence_transformers=False)
    done = edgewise("auto-opt", "-m", str(folder), "--precision", "fp32", "--output_path", str(tmp_path / "out"),
                    "--cache_dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    got = embed_json(tmp_path / "out" / "model", *[f"--text={t}" for t in TEXTS[:3]])
    assert cosines(got, reference(folder, TEXTS[:3])).min() >= 0.99999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("command, message", [
    (["quantize", "--algorithm", "rtn"], "'bert' is an encoder: quantize and finetune take decoders so far"),
    (["auto-opt", "--device", "cuda"], "encoders are exported for the CPU so far (fp32, int8)"),
    (["auto-opt", "--precision", "fp16"], "an encoder exports as int8 or fp32 for the CPU, not fp16"),
])
def test_what_edgewise_does_not_do_with_encoders_yet_is_one_line(exported, tmp_path, command, message):
    folder, _ = exported
    done = edgewise(*command, "-m", str(folder), "--output_path", str(tmp_path / "out"), "--cache_dir",
                    str(tmp_path / "cache"))
    assert_user_error(done, message, tmp_path / "out")


def test_embed_errors_are_one_line(exported, tmp_path):
    _, models = exported
    assert_user_error(edgewise("embed", str(models["fp32"])), "nothing to embed", tmp_path / "none")
    assert_user_error(edgewise("embed", str(tmp_path), "--text", "a"), "is not an encoder exported by edgewise",
                      tmp_path / "none")
    assert_user_error(edgewise("embed", str(models["fp32"]), "--text", "a", "--output", str(tmp_path / "v.txt")),
                      "written as a .npy file", tmp_path / "v.txt")

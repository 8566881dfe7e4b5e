"""Small builders shared by tests: the sample corpus slice's recipe, random HF reference models, padded batches,
free ports, offline W&B runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def small_sample_recipe(out: Path, tokenizer: Path, max_seq_len: int = 1024, files: int = 60) -> Path:
    """The shipped sample recipe with each file-based input cut to its first ``files`` files."""
    recipe = yaml.safe_load((ROOT / "data_prep/sample.yaml").read_text())
    recipe.update(tokenizer=str(tokenizer), out_dir=str(out / "mds"), max_seq_len=max_seq_len, files_per_unit=20)
    recipe.pop("holdout", None)  # the tests that need a held-out split ask for one
    for source in recipe["sources"]:
        for inp in source["inputs"]:
            if inp["format"] in ("files", "docstrings"):
                inp["max_files"] = files
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def hf_reference_model(every: int = 3, heads: int = 4, vocab: int = 1001, hidden: int = 64, layers: int = 4,
                       window: int = 16, seed: int = 0, classifier: bool = False, **extra):
    """A transformers ModernBertForMaskedLM (or, with ``classifier``, ModernBertForSequenceClassification, whose
    config ``extra`` completes) with every weight random, norms and biases included."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification

    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3 // 2, num_hidden_layers=layers,
        num_attention_heads=heads, global_attn_every_n_layers=every, local_attention=window,
        global_rope_theta=160000.0, local_rope_theta=10000.0, pad_token_id=0, cls_token_id=1, sep_token_id=2,
        bos_token_id=1, eos_token_id=2, reference_compile=False, attn_implementation="sdpa", **extra)
    model = (ModernBertForSequenceClassification if classifier else ModernBertForMaskedLM)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:  # LayerNorm weights (otherwise 1) and biases (otherwise 0)
                param.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model


def padded_batch(lengths: list[int], vocab: int, pad_id: int = 0, seed: int = 1):
    """Right-padded ids and attention mask for sequences of the given lengths, ids avoiding 0..2."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, pad_id), mask


def free_port() -> int:
    """A loopback port no one listens on, for a test's own torch.distributed rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_config(**overrides):
    from bertforge.model import ModernBertConfig

    fields = dict(vocab_size=515, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  global_attn_every_n_layers=3, local_attention=16, pad_token_id=0, cls_token_id=1, sep_token_id=2,
                  mask_token_id=3, global_rope_theta=160000.0)
    fields.update(overrides)
    return ModernBertConfig(**fields)


def wandb_runs(folder: Path) -> dict[str, tuple[dict, list[dict]]]:
    """Every offline W&B run under ``folder``, read with wandb's own record reader: id -> (config, history).

    An attempt that was SIGKILLed may have left its file empty or cut short; what it flushed is read."""
    import json

    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    runs = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        if path.stat().st_size == 0:
            continue
        store = DataStore()
        store.open_for_scan(str(path))
        config, history = {}, []
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):  # the config given to wandb.init, then later updates
                items = record.run.config.update if kind == "run" else record.config.update
                config.update({item.key: json.loads(item.value_json) for item in items})
            elif kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        run_id = path.stem.split("-", 1)[1]
        previous = runs.get(run_id, ({}, []))
        runs[run_id] = (previous[0] | config, previous[1] + history)
    return runs


def read_metrics(folder: Path) -> dict[int, dict]:
    """``metrics.jsonl``'s step records by batch (not the divergence guard's event lines); a resumed run rewrites
    the batches after its checkpoint, and the last wins."""
    import json

    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["batch"]: row for row in rows if "event" not in row}


def run_config(tmp_path: Path, sample_data: dict, name: str, **overrides) -> Path:
    """The quickstart config pointed at the test corpus, small enough for CI's two cores."""
    config = yaml.safe_load((ROOT / "yamls/quickstart.yaml").read_text())
    config["includes"] = {"model": str(ROOT / "yamls/models/tiny.yaml")}
    config.update(run_name=name, save_folder=str(tmp_path / name), export_dir=None, max_duration="12288tok",
                  global_batch_size=4, log_interval=1)
    config["optimizer"] = {"name": "stableadamw", "lr": 2e-3, "weight_decay": 1e-5}  # fast for a dozen steps
    config["schedule"] = {"name": "wsd", "warmup_tokens": 2048, "decay_tokens": 4096, "decay_shape": "1-sqrt"}
    config["checkpoint"] = {"interval": "4ba", "keep": -1}
    config.pop("eval")  # the test slice has no held-out split; tests that evaluate pass eval=...
    config["data"].update(tokenizer=sample_data["tokenizer"], max_seq_len=256, buffer_docs=128)
    for stream in ("code", "web", "science"):
        config["data"]["streams"][stream]["local"] = str(sample_data["mds"] / stream)
    for key, value in overrides.items():
        config[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def kill_when_saved(config: Path, folder: Path, checkpoint: str = "ep0-ba8-rank0.pt") -> None:
    """Start `bertforge train CONFIG` and SIGKILL its whole process group (a real crash: nothing more is saved)
    as soon as ``checkpoint`` appears in ``folder``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bertforge = str(Path(sys.executable).with_name("bertforge"))
    proc = subprocess.Popen([bertforge, "train", str(config)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (folder / checkpoint).exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def read_docs(mds: Path) -> list:
    """Every sample (token array) of a prepared dataset, in its order."""
    from streaming import StreamingDataset

    from bertforge.data.shm_registration import registration_lock

    with registration_lock():  # as bertforge's own readers: another test worker's run may be registering
        ds = StreamingDataset(local=str(mds), shuffle=False, batch_size=1)
    docs = [ds[i]["tokens"] for i in range(ds.num_samples)]
    del ds
    return docs


def release_shared_memory(under: Path) -> None:
    """Unlink the shared memory streaming registered for datasets read from folders under ``under`` (this test
    worker's temporary folder), so a test may read the same folder again with a remote (streaming refuses a local
    folder some live registration holds). streaming's clean_stale_shared_memory would unlink every run's blocks,
    those of the runs other test workers have open included."""
    from streaming.base.shared.prefix import _unpack_locals

    root = str(under.resolve())
    for record in Path("/dev/shm").glob("*_locals"):
        try:
            folders, _ = _unpack_locals(record.read_bytes())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            continue
        if any(folder == root or folder.startswith(root + "/") for folder in folders):
            for block in record.parent.glob(record.name.split("_")[0] + "_*"):
                block.unlink(missing_ok=True)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every prepared file, ignoring the decompressed copies StreamingDataset leaves beside the .zstd shards."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (p.suffix == ".mds" and p.with_name(p.name + ".zstd").exists())}


def train_ranks(config: Path, ranks: int, *overrides: str, launcher: str = "composer") -> subprocess.CompletedProcess:
    """`bertforge train CONFIG` on ``ranks`` real processes (composer's launcher or torchrun)."""
    if ranks == 1:
        launch = [str(Path(sys.executable).with_name("bertforge")), "train"]
    elif launcher == "torchrun":
        launch = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(ranks),
                  "--master-port", str(free_port()), "-m", "bertforge.train"]
    else:
        launch = [str(Path(sys.executable).with_name("composer")), "-n", str(ranks), "--master_port",
                  str(free_port()), "-m", "bertforge.train"]
    return subprocess.run([*launch, str(config), *overrides], capture_output=True, text=True, timeout=600)


def assert_export_matches(hf_dir: Path, checkpoint: Path, atol: float = 1e-5) -> None:
    """transformers' AutoModelForMaskedLM on an exported directory gives the logits of our model read from
    ``checkpoint`` (random ids of the test tokenizer's range)."""
    from transformers import AutoModelForMaskedLM

    from bertforge.checkpoint.read import load_checkpoint_model

    hf = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    ours = load_checkpoint_model(checkpoint).eval()
    ids = torch.randint(5, 2048, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids).logits, atol=atol, rtol=0)


def write_probe_tasks(folder: Path, rows: int = 40) -> tuple[Path, Path]:
    """Two small task YAMLs for the probe: a classification task (Python lines against English ones, which even a
    fresh model's mean-pooled tokens tell apart) and a retrieval task whose every query is the exact text of its
    document (in another order, among as many distractors), which a fresh model ranks first."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    code = [f"def handler_{i}(value, *args): return value.split(':')[{i % 5}]" for i in range(rows)]
    prose = [f"The river {i} was quiet in the evening, and the town slept beside it." for i in range(rows)]
    for split, part in (("train", slice(0, rows // 2)), ("validation", slice(rows // 2, rows))):
        lines = [{"text": text, "label": label} for pair in zip(code[part], prose[part], strict=True)
                 for text, label in zip(pair, ("code", "prose"), strict=True)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    classify = {"name": "probe-kind", "data": {"files": {"train": "train.jsonl", "validation": "validation.jsonl"},
                                               "text_fields": ["text"]},
                "head": {"labels": ["code", "prose"]}, "train": {"max_length": 64}}
    beir = folder / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    docs = [f"{word} {i} " + " ".join(f"{word}{j}" for j in range(i % 7)) for i, word in
            enumerate(["alpha", "gamma", "delta", "omega", "sigma"] * (rows // 5))]
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": text}) + "\n"
                                               for i, text in reversed(list(enumerate(docs)))))
    queried = range(0, len(docs), 2)
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": docs[i]}) + "\n" for i in queried))
    for split in ("train", "test"):  # the task's checks want its training split too; the probe reads only test
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n"
                                                                                            for i in queried))
    retrieve = {"name": "probe-echo", "kind": "retrieval", "data": {"beir": "beir", "eval_splits": ["test"]},
                "train": {"max_length": 64}}
    paths = folder / "probe-kind.yaml", folder / "probe-echo.yaml"
    for path, task in zip(paths, (classify, retrieve), strict=True):
        path.write_text(yaml.safe_dump(task))
    return paths

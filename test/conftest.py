"""Shared fixtures: synthetic checkpoints and their exported engines, made once per test session.

Everything is built here from random weights (no downloads): tiny configs of the real
architecture, V2 (LDPv2) and V1 (LDP).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "42")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class ScriptedDecoder:
    """Stands in for the decoder engine: its logits make `script[i]` the greedy choice at step i."""

    def __init__(self, script, vocab):
        self.script, self.vocab, self.calls = list(script), vocab, 0

    def logits(self, i):
        x = np.zeros(self.vocab, np.float32)
        x[self.script[min(i, len(self.script) - 1)]] = 5.0
        return x

    def run(self, embeds, row=0):
        self.calls += 1
        return self.logits(self.calls)


@pytest.fixture(scope="session")
def scripted():
    """scripted(tokenizer, token ids, cancel=None, **GenerationParams) -> (Generator, ScriptedDecoder):
    a Generator whose greedy choices are the given ids, with a known answer for every case."""
    from mobilevlm_ros.runtime.generation import GenerationParams, Generator

    def make(tok, script, cancel=None, **params):
        dec = ScriptedDecoder(script, tok.vocab_size)
        table = np.zeros((tok.vocab_size, 4), np.float32)
        return Generator(dec, table, tok, dec.logits(0), GenerationParams(**params).validate(), cancel), dec

    return make


def scene(seed: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A plain background with one block and sensor noise: a frame the parity tests caption."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    img[40:120, 60:150] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def shown_texts(generator) -> list:
    """The text a reader is shown after each step of the decode loop, to the end."""
    texts = []
    while not generator.is_done():
        generator.generate_next_token()
        texts.append(generator.text)
    return texts


CHILD_TIMEOUT = 30.0  # seconds a node process has for what a test waits on


def wait_for(predicate, timeout=CHILD_TIMEOUT, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class NodeProcess:
    """`python -m mobilevlm_ros.ros.node` in namespace /<ns> with `params` (the rest at their defaults),
    in environment `env` (default: this one), its log collected line by line."""

    def __init__(self, ns: str, env=None, **params):
        args = [sys.executable, "-m", "mobilevlm_ros.ros.node", "--ros-args", "-r", f"__ns:=/{ns}"]
        for k, v in params.items():
            args += ["-p", f"{k}:={json.dumps(v) if isinstance(v, (list, bool)) else v}"]
        self.ns = ns
        self.lines: list = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, needle: str, timeout: float = CHILD_TIMEOUT):
        wait_for(lambda: needle in self.log or self.proc.poll() is not None, timeout,
                 f"'{needle}' in the node log")
        assert needle in self.log, (f"node exited ({self.proc.returncode}) "
                                    f"before logging {needle!r}:\n{self.log}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sigint_default() -> None:
    """Popen preexec_fn for a child a test stops with SIGINT: a shell that started the suite in the
    background (`make test &`) leaves SIGINT ignored, children inherit that, and Python then never
    raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def matmulnbits(engine: str) -> dict:
    """node name -> (attributes, [B, scales, zero points if any]) of every MatMulNBits of an engine's
    decoder graph."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(os.path.join(engine, "decoder.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: ({a.name: helper.get_attribute_value(a) for a in n.attribute},
                     [weights[i] for i in n.input[1:4] if i])
            for n in model.graph.node if n.op_type == "MatMulNBits"}


def batched_agreement(alone, batched, prompts, tokens: int) -> float:
    """Greedy tokens of each (rgb, question) decoded alone by VLM `alone`; then all prompts in one
    batch of VLM `batched`, each row fed its alone-tokens (teacher-forced): the share of positions
    where the batch's greedy choice equals them."""
    from mobilevlm_ros.runtime.generation import GenerationParams

    params = GenerationParams(max_new_tokens=tokens, ignore_eos=True)
    want = [alone.describe(rgb, q, params).token_ids for rgb, q in prompts]
    rows = list(range(len(prompts)))
    logits = [batched.generator(rgb, q, params, row=r).logits.copy() for r, (rgb, q) in zip(rows, prompts)]
    agree = 0
    for k in range(tokens):
        agree += sum(int(np.argmax(logits[r])) == want[r][k] for r in rows)
        logits = list(batched.decoder.step(rows, batched.table[[want[r][k] for r in rows]]))
    return agree / (tokens * len(prompts))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """checkpoints(name, layout="", weights_format="safetensors") -> folder (cached)."""
    from mobilevlm_ros.model.synthetic import write_synthetic

    made = {}

    def get(name: str, layout: str = "", weights_format: str = "safetensors") -> str:
        key = (name, layout, weights_format)
        if key not in made:
            out = tmp_path_factory.mktemp(f"ckpt-{name}-{layout or 'default'}-{weights_format}")
            made[key] = write_synthetic(name, str(out), layout=layout, weights_format=weights_format)
        return made[key]

    return get


@pytest.fixture(scope="session")
def engines(tmp_path_factory, checkpoints):
    """engines(name, precision="fp32") -> engine directory exported from checkpoints(name) (cached)."""
    from mobilevlm_ros.model.export import export

    made = {}

    def get(name: str, precision: str = "fp32") -> str:
        key = (name, precision)
        if key not in made:
            out = tmp_path_factory.mktemp(f"engine-{name}-{precision}")
            # Block 32: the tiny model's matrices are 64 wide, too narrow for the default block of 128.
            made[key] = export(checkpoints(name), str(out), precision, "cpu", model_id=f"synthetic/{name}",
                               block_size=32, log=lambda s: None)
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference(checkpoints):
    """reference(name) -> the PyTorch reference model loaded from checkpoints(name) (cached)."""
    from mobilevlm_ros.model.loader import load_checkpoint

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = load_checkpoint(checkpoints(name))
        return made[name]

    return get


# Ways careless hands and bad disks break an engine folder, each with the text its error must name.
CORRUPTIONS = {
    "file_entry_string": "manifest.json: files.vision",
    "entry_without_bytes": "manifest.json: files.decoder.bytes",
    "no_decoder_io": "manifest.json: decoder_io",
    "image_size_string": "manifest.json: model.image_size",
    "garbage_embeddings": "engine file embed_tokens.npy",
    "head_dim_24": "head_dim 24 is not a multiple of 16",
}


def _edit_manifest(engine: str, fn) -> None:
    path = os.path.join(engine, "manifest.json")
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture
def corrupt_engine(tmp_path, engines):
    """corrupt_engine(name of CORRUPTIONS) -> a copy of the tiny fp32 engine, broken that way."""
    def make(corruption: str) -> str:
        from mobilevlm_ros.runtime import manifest as mf

        engine = str(tmp_path / corruption)
        shutil.copytree(engines("tiny", "fp32"), engine)
        if corruption == "file_entry_string":
            _edit_manifest(engine, lambda d: d["files"].update(vision="vision.onnx"))
        elif corruption == "entry_without_bytes":
            _edit_manifest(engine, lambda d: d["files"]["decoder"].pop("bytes"))
        elif corruption == "no_decoder_io":
            _edit_manifest(engine, lambda d: d.pop("decoder_io"))
        elif corruption == "image_size_string":
            _edit_manifest(engine, lambda d: d["model"].update(image_size="112"))
        elif corruption == "garbage_embeddings":  # and a manifest that vouches for it
            path = os.path.join(engine, "embed_tokens.npy")
            with open(path, "wb") as f:
                f.write(os.urandom(4096))
            entry = {"path": "embed_tokens.npy", "bytes": 4096, "sha256": mf.sha256(path)}
            _edit_manifest(engine, lambda d: d["files"].update(embeddings=entry))
        elif corruption == "head_dim_24":
            _edit_manifest(engine, lambda d: d["model"].update(head_dim=24))
        else:
            raise ValueError(corruption)
        return engine

    return make

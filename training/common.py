"""Pieces shared by the training scripts: paths, the text formats the C++ reader uses, the
tokenizer wrapper, and the on-disk layout of a prepared work directory.

The text formats here must stay identical to the engine's (qa/prompt.cpp, qa/reader.cpp): the model
is trained on exactly the strings it will be shown at answer time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Sequence

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))

# Special ids as LLaMA's tokenizer has them (tokenizer.sh passes them to spm_train).
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# Label value that cross_entropy ignores (prompt tokens, padding).
IGNORE = -100


# --------------------------------------------------------------------------------------------------
# Text formats (the engine's defaults)
# --------------------------------------------------------------------------------------------------

def chunk_text(title: str, text: str) -> str:
    """One passage as an encoder chunk: qa::encoder_chunk_text."""
    return f"Document (Title: {title}): {text}" if title else f"Document: {text}"


def prompt_text(question: str) -> str:
    """The decoder prompt with no passage in it: PromptFormat's question_template with
    decoder_passages = 0 (the reader's default)."""
    return f"Question: {question}\nAnswer:"


def target_text(answer: str) -> str:
    """What the model must generate after the prompt: the reader generates greedily and stops at the
    first newline, so the answer ends with one."""
    return f" {answer}\n"


def pretrain_doc(title: str, text: str, qa_pairs: Sequence[tuple]) -> str:
    """A pretraining document: the passage as the engine renders a decoder passage, followed by its
    questions and answers in the prompt format. The decoder thus learns the language of the
    passages, the answer format, and to copy an answer out of a passage it has read; the CEPE
    stages then teach the encoder and cross-attention to supply that passage instead."""
    parts = [chunk_text(title, text) + "\n\n"]
    parts += [prompt_text(q) + target_text(a) + "\n" for q, a in qa_pairs]
    return "".join(parts).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------
# Tokenizer: the python binding when present, else Debian's spm_encode/spm_decode
# --------------------------------------------------------------------------------------------------

class Tokenizer:
    """Encodes without BOS/EOS (callers add them). The model is trained with add_dummy_prefix=false
    and sees no newline in training (spm_train reads lines), so no piece contains "\\n": encoding a
    text line by line and joining with the newline byte piece is then exactly encoding it whole,
    which lets the command-line fallback (one line per input line) give the binding's ids."""

    def __init__(self, model_path: str):
        self.path = model_path
        try:
            import sentencepiece as spm  # python3-sentencepiece, or pip's on the GPU box
            self.sp = spm.SentencePieceProcessor()
            self.sp.Load(model_path)
        except ImportError:
            self.sp = None
            if not shutil.which("spm_encode"):
                raise RuntimeError("neither the sentencepiece python module nor spm_encode found")
        self.newline_id = self._newline_id()

    def _newline_id(self) -> int:
        if self.sp is not None:
            return self.sp.PieceToId("<0x0A>")
        # spm_encode --output_format=id of a lone byte piece is not reachable from text lines, so
        # read the id from the vocabulary listing (spm_export_vocab prints piece TAB score).
        out = subprocess.run(["spm_export_vocab", f"--model={self.path}"], check=True,
                             capture_output=True, text=True).stdout
        for i, line in enumerate(out.splitlines()):
            if line.split("\t")[0] == "<0x0A>":
                return i
        raise RuntimeError(f"{self.path}: no <0x0A> byte piece (train with --byte_fallback)")

    def encode_many(self, texts: Sequence[str]) -> List[List[int]]:
        if self.sp is not None:
            return [self.sp.EncodeAsIds(t) for t in texts]
        lines, owner = [], []
        for i, t in enumerate(texts):
            for seg in t.split("\n"):
                lines.append(seg)
                owner.append(i)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
            f.write("\n".join(lines) + "\n")
            name = f.name
        try:
            out = subprocess.run(["spm_encode", f"--model={self.path}", "--output_format=id",
                                  f"--input={name}"], check=True, capture_output=True,
                                 text=True).stdout.split("\n")
        finally:
            os.unlink(name)
        result: List[List[int]] = [[] for _ in texts]
        seen = [0] * len(texts)
        for seg_ids, i in zip(out, owner):
            if seen[i]:
                result[i].append(self.newline_id)
            seen[i] += 1
            result[i].extend(int(x) for x in seg_ids.split())
        return result

    def encode(self, text: str) -> List[int]:
        return self.encode_many([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.sp is not None:
            return self.sp.DecodeIds(ids)
        out = subprocess.run(["spm_decode", f"--model={self.path}", "--input_format=id"],
                             input=" ".join(map(str, ids)) + "\n", check=True,
                             capture_output=True, text=True).stdout
        return out[:-1] if out.endswith("\n") else out


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

def read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def default_shared_dir() -> str:
    return os.environ.get("CEPE_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))

"""Tokenizer stage: train the BPE tokenizer on the pipeline's corpus and publish it in HF format.

inputs:  corpus  (JSONL documents, or a data-stage output)
output:  <output>/tokenizer/  tokenizer.json, tokenizer_config.json, special_tokens_map.json
"""

import itertools
import logging
import tempfile
from pathlib import Path

from zhinao.artifacts import StageOutput
from zhinao.config.runtime import StageRuntime
from zhinao.config.tokenizer import TokenizerParams
from zhinao.corpus import read_documents
from zhinao.distributed import DistEnv
from zhinao.storage import open_store
from zhinao.tokenizer import to_transformers, train_bpe

Params = TokenizerParams
log = logging.getLogger(__name__)


def run(rt: StageRuntime, params: TokenizerParams) -> None:
    if not DistEnv.from_env().is_main:
        log.info("tokenizer training runs on rank 0 only; nothing to do here")
        return
    if "corpus" not in rt.inputs:
        raise SystemExit("tokenizer stage needs inputs.corpus")
    docs = read_documents(open_store(rt.inputs["corpus"]), text_field=params.text_field)
    texts = (d.text for d in itertools.islice(docs, params.max_documents))
    tok = train_bpe(texts, vocab_size=params.vocab_size, min_frequency=params.min_frequency)
    out = StageOutput.at(rt.output)
    with tempfile.TemporaryDirectory() as tmp:
        to_transformers(tok).save_pretrained(tmp)
        url = out.put_tokenizer(Path(tmp))
    out.write_summary({"vocab_size": tok.get_vocab_size(), "tokenizer": url})
    log.info("tokenizer with %d tokens written to %s", tok.get_vocab_size(), url)

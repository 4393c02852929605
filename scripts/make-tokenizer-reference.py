"""Writes the tokenizer references of crates/engine/tests/tokenizer.rs:

- crates/engine/tests/fixtures/tokenizer-reference.json: token ids that the Python `tokenizers`
  package (the reference implementation) gives for multilingual texts with the vendored
  XLM-RoBERTa tokenizer.json alone.
- crates/engine/tests/fixtures/tokenizer-reference-transformers.json: token ids that
  `transformers.AutoTokenizer` (the official pipeline's loader) gives on the folder that
  `jina-embed fixture` writes (tokenizer.json + the real repository's tokenizer_config.json and
  special_tokens_map.json), for texts holding the literal spellings of the special tokens, and on
  the same folder with a tokenizer_config.json whose flags are flipped.

transformers is pinned to 4.57.6, the last 4.x: transformers 4 loads tokenizer.json unchanged and
applies tokenizer_config.json's added_tokens_decoder over it. transformers 5 instead rebuilds an
XLM-RoBERTa tokenizer's normaliser and pre-tokeniser from the class definition, ignoring
tokenizer.json's (it drops the `▁` before a special token and the collapsing of space runs), so it
no longer tokenises as the model's own tokenizer.json does. Rerun after changing the texts
(no torch needed):

    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install "transformers==4.57.6"
    /tmp/tok/bin/python scripts/make-tokenizer-reference.py
"""
import copy, gzip, json, pathlib, tempfile
import tokenizers
import transformers

root = pathlib.Path(__file__).resolve().parent.parent
assets = root / "assets"
fixtures = root / "crates/engine/tests/fixtures"
tokenizer_json = gzip.decompress((assets / "xlm-roberta-tokenizer.json.gz").read_bytes())

# 1. tokenizers alone on tokenizer.json.
tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode())
texts = [
    "Organic skincare for sensitive skin with aloe vera and chamomile.",
    "Bio-Hautpflege für empfindliche Haut mit Aloe Vera und Kamille.",
    "Les soins de la peau biologiques pour peaux sensibles à l'aloe vera.",
    "Cuidado de la piel orgánico para piel sensible con aloe vera y manzanilla.",
    "针对敏感肌专门设计的天然有机护肤产品：体验由芦荟和洋甘菊提取物带来的自然呵护。",
    "新しいメイクのトレンドは鮮やかな色と革新的な技術に焦点を当てています。",
    "Органический уход за кожей для чувствительной кожи.",
    "العناية بالبشرة العضوية للبشرة الحساسة",
    "संवेदनशील त्वचा के लिए जैविक त्वचा देखभाल",
    "민감한 피부를 위한 유기농 스킨케어",
    "Ευαίσθητο δέρμα και βιολογική περιποίηση",
    "Hassas cilt için organik cilt bakımı",
    "🙂 Emojis 🚀🔥, URLs like https://example.com/a?b=c&d=e and code `fn main() {}`",
    "tabs\tand\nnewlines  and   runs of spaces",
    "   leading and trailing spaces   ",
    "```???!!!...",
    "",
    " ",
    "Represent the query for retrieving evidence documents: ",
]
cases = []
for text in texts:
    cases.append({
        "text": text,
        "with_specials": tok.encode(text, add_special_tokens=True).ids,
        "plain": tok.encode(text, add_special_tokens=False).ids,
    })
out = {"reference": f"Python tokenizers {tokenizers.__version__}", "cases": cases}
path = fixtures / "tokenizer-reference.json"
path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
print(f"wrote {len(cases)} cases to {path}")

# 2. transformers.AutoTokenizer on the fixture folder, as shipped and with flipped flags.
special_texts = [
    "a <mask> b",
    "a<mask>b",
    "a  <mask>",
    "<mask>",
    " <mask> ",
    "<mask> at the start",
    "at the end <mask>",
    "(<mask>)",
    "x, <mask>. y",
    "a\t<mask>",
    "a\n<mask>",
    "a \u00a0<mask>",
    "a\u3000<mask>",
    "你好 <mask>世界",
    "x <s> y </s> z",
    "<s>",
    "</s>",
    "x<s>y</s>",
    " <s> ",
    "<s><mask></s>",
    "</s></s> <s>",
    "hello <pad>. <unk>!",
    "a <unk>",
    "<unk><unk> <unk>",
    "<pad><pad> <pad>",
    "is this <s>, </s>; <pad>: <unk>? <mask>!",
    "near misses: <mask <MASK> < mask> <s > <<s>> </ s> <pa d>",
    "Represent the query for retrieving evidence documents: <mask>",
    "Represent the document for retrieval: </s> <mask> text",
]
config = json.loads((assets / "tokenizer_config.json").read_text())
flipped = copy.deepcopy(config)
flipped["added_tokens_decoder"]["250001"]["lstrip"] = False  # <mask>
flipped["added_tokens_decoder"]["2"]["rstrip"] = True  # </s>
flipped["added_tokens_decoder"]["3"]["lstrip"] = True  # <unk>


def ids_on_folder(tokenizer_config_text):
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "tokenizer.json").write_bytes(tokenizer_json)
        (d / "tokenizer_config.json").write_text(tokenizer_config_text)
        (d / "special_tokens_map.json").write_bytes((assets / "special_tokens_map.json").read_bytes())
        t = transformers.AutoTokenizer.from_pretrained(str(d))
        assert t.is_fast, type(t)
        return [
            {
                "text": text,
                "with_specials": t(text)["input_ids"],
                "plain": t(text, add_special_tokens=False)["input_ids"],
            }
            for text in special_texts
        ], t.model_max_length


shipped, max_length = ids_on_folder((assets / "tokenizer_config.json").read_text())
flipped_cases, _ = ids_on_folder(json.dumps(flipped, indent=2))
out = {
    "reference": f"Python transformers {transformers.__version__} AutoTokenizer (tokenizers {tokenizers.__version__})",
    "model_max_length": max_length,
    "flipped_config": flipped,
    "cases": shipped,
    "flipped_cases": flipped_cases,
}
path = fixtures / "tokenizer-reference-transformers.json"
path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
print(f"wrote {len(shipped)} + {len(flipped_cases)} cases to {path}")

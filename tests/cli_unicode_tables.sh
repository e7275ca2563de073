#!/usr/bin/env bash
# common/unicode_tables.cpp is exactly what common/gen_unicode_tables.py prints (the one generator
# of every Unicode table: answer scoring and the WordPiece tokenizer both read it). Only the first
# line (which Python made it) may differ; another Unicode version skips, since its tables differ.
set -euo pipefail
src=${CEPE_SOURCE_DIR:?}
py=$(command -v python3 || true)
[[ -n "$py" ]] || { echo "skip: no python3"; exit 77; }
want=$(grep -o 'Unicode [0-9.]*' "$src/common/unicode_tables.cpp" | head -1)
have="Unicode $("$py" -c 'import unicodedata; print(unicodedata.unidata_version)')"
if [[ "$want" != "$have" ]]; then
  echo "skip: this python3 has $have, the committed tables $want"
  exit 77
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$py" "$src/common/gen_unicode_tables.py" >"$tmp"
if ! diff <(tail -n +2 "$tmp") <(tail -n +2 "$src/common/unicode_tables.cpp") >/dev/null; then
  echo "FAIL: common/unicode_tables.cpp is stale: run python3 common/gen_unicode_tables.py > common/unicode_tables.cpp"
  diff <(tail -n +2 "$tmp") <(tail -n +2 "$src/common/unicode_tables.cpp") | head -20
  exit 1
fi
grep -rln --include='*.py' 'emit_ranges\|unicodedata.category' "$src/common" "$src/tests" "$src/retriever" "$src/qa" 2>/dev/null |
  grep -v 'common/gen_unicode_tables.py\|tests/reference/bert_reference.py' && {
  echo "FAIL: a second Unicode table generator"; exit 1; }
echo "ok: common/unicode_tables.cpp matches its generator ($have, $(wc -l <"$tmp") lines)"

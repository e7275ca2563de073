#!/usr/bin/env bash
# The folders are layers (docs/architecture.md): common <- engine <- retriever <- index <- qa <-
# config <- server <- cli. Each library compiles against build/layers/NAME, which holds only its
# folder and those below. This test shows that an include of a folder above is a compile error
# in every layer's view, that the folders below stay reachable, and that no source includes a
# folder above its own.
set -uo pipefail
src=${CEPE_SOURCE_DIR:?}
views=${CEPE_BUILD_DIR:?}/layers
layers=(common engine retriever index qa config server)
# A folder a layer may still see above it (CMakeLists.txt: CEPE_LAYER_EXTRA_*), as "layer:folder".
# None is left: retriever/ reads passages through its own PassageLookup interface.
allowed_above=()
cxx=${CXX:-c++}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
header_of() { (cd "$src/$1" && ls *.h | head -n 1); }
is_allowed() { local p; for p in "${allowed_above[@]}"; do [[ $p == "$1:$2" ]] && return 0; done; return 1; }
for ((i = 0; i < ${#layers[@]}; ++i)); do
  layer=${layers[i]}
  [[ -d "$views/$layer" ]] || { echo "FAIL: no include view $views/$layer (configure the build)"; exit 1; }
  for ((j = 0; j < ${#layers[@]}; ++j)); do
    other=${layers[j]}
    [[ $other == "$layer" ]] && continue
    printf '#include "%s/%s"\n' "$other" "$(header_of "$other")" > "$tmp/probe.cpp"
    if "$cxx" -std=c++20 -fsyntax-only -I "$views/$layer" -I /usr/include/rapidjson "$tmp/probe.cpp" \
        > "$tmp/out" 2>&1; then compiled=1; else compiled=0; fi
    if ((j < i)) || is_allowed "$layer" "$other"; then
      ((compiled)) || { echo "FAIL: $layer cannot include $other (below it):"; head -3 "$tmp/out"; fail=1; }
    else
      if ((compiled)); then
        echo "FAIL: $layer's view compiles an include of $other, a folder above it"; fail=1
      elif ! grep -q "No such file" "$tmp/out"; then
        echo "FAIL: including $other from $layer failed for another reason:"; head -3 "$tmp/out"; fail=1
      fi
    fi
  done
  # The sources themselves: every "folder/..." include names this folder or one below.
  while IFS= read -r line; do
    file=${line%%:*}
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"${line#*:}")
    top=${inc%%/*}
    for ((j = i + 1; j < ${#layers[@]}; ++j)); do
      if [[ $top == "${layers[j]}" ]] && ! is_allowed "$layer" "$top"; then
        echo "FAIL: $file includes $inc, from $top above $layer"; fail=1
      fi
    done
    [[ $top == cli ]] && { echo "FAIL: $file includes $inc from cli/"; fail=1; }
  done < <(grep -rHE '#include "[a-z]+/' "$src/$layer" --include='*.h' --include='*.cpp' --include='*.cu' --include='*.cuh' --include='*.inc')
done
# Inside server/, only the connection speaks Beast: the route handlers see requests and answers
# through server/exchange.h, so they compile with no Beast header in their include closure.
beast_free=(exchange.h router.cpp generate.cpp ask.cpp openai.cpp request.cpp info.cpp)
for f in "${beast_free[@]}"; do
  if ! "$cxx" -std=c++20 -M -I "$views/server" -I /usr/include/rapidjson "$src/server/$f" \
      > "$tmp/deps" 2> "$tmp/out"; then
    echo "FAIL: cannot list the includes of server/$f:"; head -3 "$tmp/out"; fail=1
  elif grep -q "boost/beast" "$tmp/deps"; then
    echo "FAIL: server/$f includes Beast (only server/connection.* may)"; fail=1
  fi
done
# The check above can fail: the connection does include Beast.
"$cxx" -std=c++20 -M -I "$views/server" -I /usr/include/rapidjson "$src/server/connection.cpp" \
  > "$tmp/deps" 2> /dev/null
if ! grep -q "boost/beast" "$tmp/deps"; then
  echo "FAIL: the Beast probe finds no Beast in server/connection.cpp"; fail=1
fi
((fail)) && exit 1
echo "layers ok: ${layers[*]} (each view refuses every folder above it; server handlers Beast-free)"

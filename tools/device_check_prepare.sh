#!/usr/bin/env bash
# Here, before a GPU session: what tools/device_check.sh needs on a lent machine that can fetch
# nothing, into .device_carry/ (ignored by git; name it in the device tool's `carry`): the gguf
# wheel (pure Python; ossrun's tokenizer and model maker import it) and the test fixtures from
# ../shared/spec/fixtures (or $OSSRUN_SHARED/spec/fixtures). A few MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.device_carry
SHARED=${OSSRUN_SHARED:-../shared}
GGUF_VERSION=${GGUF_VERSION:-$(python3 -c "import importlib.metadata as m; print(m.version('gguf'))" 2>/dev/null || echo 0.19.0)}
rm -rf "$D" && mkdir -p "$D/whl" "$D/shared/spec"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$D/whl" "gguf==$GGUF_VERSION"
cp -r "$SHARED/spec/fixtures" "$D/shared/spec/"
git check-ignore -q "$D" || { echo "$D is not ignored by git: it would travel twice"; exit 1; }
du -sh "$D"
ls "$D/whl" "$D/shared/spec/fixtures"

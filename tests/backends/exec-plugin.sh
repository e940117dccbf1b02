#!/bin/sh
# exec-plugin.sh DIR [LOCATOR]: both ends of the external-program protocol (docs/backends.md)
# over DIR, a plain `nix copy --to file://DIR` binary cache. Without LOCATOR: the mapper
# ([[mappers]] type = "command"), answering {"op":"lookup","hash":H,"id":N} lines with DIR/H.narinfo
# and one exec: locator (the NAR file's path in DIR, its facts in the #fragment). With LOCATOR:
# the backend ([backends.command]), writing that NAR file to stdout; DIR.served logs each one.
d=$1
if [ $# -ge 2 ]; then f=${2%%#*}; echo "$f $(stat -c %s "$d/$f")" >> "$d.served"; exec cat "$d/$f"; fi
while IFS= read -r l; do
  h=$(printf %s "$l" | sed -n 's/.*"hash": *"\([0-9a-z]*\)".*/\1/p')
  i=$(printf %s "$l" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p'); n=$d/$h.narinfo
  if [ -n "$h" ] && [ -f "$n" ]; then
    v() { sed -n "s/^$1: //p" "$n"; }   # a narinfo holds no '"' nor '\': JSON-safe as it is
    printf '{"id":%s,"narinfo":"%s","locators":["exec:%s#compression=%s&fileHash=%s&fileSize=%s"]}\n' "$i" \
      "$(sed 's/$/\\n/' "$n" | tr -d '\n')" "$(v URL)" "$(v Compression)" "$(v FileHash)" "$(v FileSize)"
  else printf '{"id":%s,"found":false}\n' "$i"; fi
done

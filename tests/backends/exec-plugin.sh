#!/bin/sh
# Both ends of the external-program protocol (docs/backends.md) over plain `nix copy --to file://`
# binary-cache directories. `exec-plugin.sh DIR...` is the mapper ([[mappers]] type = "command"):
# it answers {"op":"lookup","hash":H,"id":N} lines with the first DIR/H.narinfo and one exec:
# locator per DIR holding the NAR file (its path; facts in the #fragment), else found:false.
# `exec-plugin.sh --fetch LOCATOR` is the backend ([backends.command]): the file to stdout,
# logged with its size in DIR.served.
if [ "$1" = --fetch ]; then f=${2%%#*}; echo "${f#*/nar/} $(stat -c %s "$f")" >> "${f%/nar/*}.served"; exec cat "$f"; fi
while IFS= read -r l; do
  h=$(printf %s "$l" | sed -n 's/.*"hash": *"\([0-9a-z]*\)".*/\1/p'); i=$(printf %s "$l" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
  n=; for d; do [ -z "$n" ] && [ -n "$h" ] && [ -f "$d/$h.narinfo" ] && n=$d/$h.narinfo; done
  [ -z "$n" ] && { printf '{"id":%s,"found":false}\n' "$i"; continue; }
  v() { sed -n "s/^$1: //p" "$n"; }   # a narinfo holds no '"' nor '\': JSON-safe as it is
  locs=; for d; do [ -f "$d/$(v URL)" ] && locs="$locs${locs:+,}\"exec:$d/$(v URL)#compression=$(v Compression)&fileHash=$(v FileHash)&fileSize=$(v FileSize)\""; done
  printf '{"id":%s,"narinfo":"%s","locators":[%s]}\n' "$i" "$(sed 's/$/\\n/' "$n" | tr -d '\n')" "$locs"
done

#!/bin/sh
# exec-table-mapper.sh EXPORT TABLE: an external-program mapper ([[mappers]] type = "command",
# protocol in docs/backends.md) that answers {"op":"lookup","hash":H,"id":N} lines with
# EXPORT/H.narinfo (a `nix copy --to file://` export) and, as locators, the second field of
# every TABLE line whose first field is that narinfo's URL (`nar/x.nar.zst ipfs:bafy...`), each
# with the NAR file's facts as its #fragment; TABLE is read at each lookup (tests append to it).
e=$1 t=$2
while IFS= read -r l; do
  h=$(printf %s "$l" | sed -n 's/.*"hash": *"\([0-9a-z]*\)".*/\1/p'); i=$(printf %s "$l" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
  n=$e/$h.narinfo
  if [ -z "$h" ] || [ ! -f "$n" ]; then printf '{"id":%s,"found":false}\n' "$i"; continue; fi
  v() { sed -n "s/^$1: //p" "$n"; }
  fr="#compression=$(v Compression)&fileHash=$(v FileHash)&fileSize=$(v FileSize)"
  locs=$(awk -v u="$(v URL)" -v fr="$fr" '$1 == u { printf "%s\"%s%s\"", (k++ ? "," : ""), $2, fr }' "$t")
  printf '{"id":%s,"narinfo":"%s","locators":[%s]}\n' "$i" "$(sed 's/$/\\n/' "$n" | tr -d '\n')" "$locs"
done

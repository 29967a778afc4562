#!/bin/sh
# Check an airgap bundle by hand, installing nothing, without Python: the signatures with openssl, every
# part and file against the signed manifest with sha256sum, and, where zstd is installed, every blob the
# parts carry against its digest.  POSIX sh (dash, busybox ash).
#
#   sh installer/audit.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--allow-expired]
#        [--allow-unexpected] [--from DIR ...] [BUNDLE]
#
# BUNDLE: the bundle directory; for a bundle split over media, the folder holding vol-01/, vol-02/, ... or
# the volume holding manifest.json (its sibling vol-NN folders are checked with it unless --from names the
# other volumes).  Default: the bundle this script sits in.  Needs openssl (1.1.1 or 3.x), sha256sum, awk,
# head, find, ls, sort and mktemp; zstd when present (without it, blob digests are not checked and it says
# so).  Exit codes are airgap's: 0 ok, 2 usage, 3 not a bundle, 4 damaged, missing or unlisted file,
# 5 signature or expiry, 6 tools or environment.
#
# As careful as install.sh: manifest.json (at most 16 MiB) is copied first, its signatures checked against
# the copy and only the copy is parsed; links, FIFOs and devices anywhere in the bundle fail without being
# opened, and so does any file the manifest does not list.  With zstd each part is copied, its copy hashed
# and decompressed, so the blob checked is made of the bytes checked.  Temporary space ($TMPDIR): the
# manifest and, with zstd, one part.
set -u
umask 077
LC_ALL=C
export LC_ALL

MAX_MANIFEST=16777216 # 16 MiB: airgap's own cap on manifest.json
nl='
'

# --- messages: every name printed goes through esc, so no file name can forge a line -----------------
escape() {
  awk -v join="${1:-}" '
    BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
    {
      out = ""
      n = length($0)
      for (i = 1; i <= n; i++) {
        c = substr($0, i, 1); o = ord[c]
        if (o < 32 || o > 126) out = out sprintf("\\x%02x", o)
        else if (c == "\\") out = out "\\\\"
        else out = out c
      }
      if (join == "") print out
      else printf "%s%s", (NR > 1 ? "\\n" : ""), out
    }
    END { if (join != "" && NR) printf "\n" }'
}
esc() { printf '%s' "$1" | escape join; }
say() { esc "$1" >&2; }
out() { esc "$1"; }

usage() {
  say "usage: audit.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--allow-expired] [--allow-unexpected] [--from DIR ...] [BUNDLE]"
  exit 2
}

die() {
  code=$1
  say "error: $2"
  if [ -n "${3:-}" ]; then say "hint: $3"; fi
  say "AUDIT FAILED"
  exit "$code"
}

safe_tmpdir() { # TMPDIR (else /tmp) must not let another user swap what this script makes there: a directory
  # owned by root or by us, and sticky (as /tmp is) if others may write to it
  _t=${TMPDIR:-/tmp}
  _l=$(ls -ldnL -- "$_t" 2>/dev/null) || die 6 "TMPDIR $_t does not exist" "set TMPDIR to a directory of yours, or leave it unset"
  set -- $_l
  case $1 in d*) ;; *) die 6 "TMPDIR $_t is not a directory" "set TMPDIR to a directory of yours, or leave it unset" ;; esac
  [ "$3" = 0 ] || [ "$3" = "$(id -u)" ] ||
    die 6 "TMPDIR $_t belongs to another user (uid $3), who could swap the files checked there" \
      "set TMPDIR to a directory of yours, or leave it unset (/tmp)"
  case $1 in
  ?????w* | ????????w*)
    case $1 in
    ?????????[tT]*) ;;
    *) die 6 "TMPDIR $_t may be written by other users and is not sticky: they could swap the files checked there" \
      "set TMPDIR to a directory only you can write to, or leave it unset (/tmp)" ;;
    esac
    ;;
  esac
}

for tool in awk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed" >&2; exit 6; }
done

absolute() { # $1 path -> an absolute path, relative to the directory the script was started in
  case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$start" "$1" ;; esac
}

# --- options -------------------------------------------------------------------------------------------
start=$(pwd)
trusts=
threshold=1
allow_expired=0
allow_unexpected=0
bundle=
froms=
no_newline() { case $2 in *"$nl"*) die 2 "$1 names a path with a line break" ;; esac; }
add_trust() {
  [ -n "$1" ] || usage
  no_newline --trust "$1"
  trusts="$trusts$(absolute "$1")$nl"
}
add_from() {
  no_newline --from "$1"
  [ -d "$1" ] || die 2 "--from $1 is not a directory" "pass the directory (mount point) of another volume"
  froms="$froms$(cd "$1" && pwd)$nl"
}
while [ $# -gt 0 ]; do
  case $1 in
  --trust) [ $# -ge 2 ] || usage; add_trust "$2"; shift 2 ;;
  --trust=*) add_trust "${1#--trust=}"; shift ;;
  --threshold) [ $# -ge 2 ] || usage; threshold=$2; shift 2 ;;
  --threshold=*) threshold=${1#--threshold=}; shift ;;
  --allow-expired) allow_expired=1; shift ;;
  --allow-unexpected) allow_unexpected=1; shift ;;
  --from) [ $# -ge 2 ] || usage; add_from "$2"; shift 2 ;;
  --from=*) add_from "${1#--from=}"; shift ;;
  -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ; exit 0 ;;
  --)
    shift
    [ $# -le 1 ] || usage
    if [ $# = 1 ]; then
      [ -z "$bundle" ] || usage
      bundle=$1
      shift
    fi
    ;;
  -*) usage ;;
  *) [ -z "$bundle" ] || usage; bundle=$1; shift ;;
  esac
done
[ -n "$trusts" ] || die 2 "--trust KEY.pub is required" "give the security team's public key (or a directory of .pub files), taken from a trusted channel"
case $threshold in
'' | *[!0-9]*) die 2 "--threshold must be a whole number of at least 1, not $threshold" ;;
esac
[ "${#threshold}" -le 6 ] && [ "$threshold" -ge 1 ] || die 2 "--threshold must be a whole number of at least 1, not $threshold"
threshold=$((threshold + 0))

for tool in openssl sha256sum awk head find ls sort mktemp wc; do
  command -v "$tool" >/dev/null 2>&1 || die 6 "$tool is not installed" "install it (Debian: openssl, coreutils, mawk, findutils)"
done
if command -v zstd >/dev/null 2>&1; then have_zstd=1; else have_zstd=0; fi

if [ -z "$bundle" ]; then
  bundle=$(cd "$(dirname -- "$0")/.." && pwd) || die 2 "cannot find the bundle around $0"
fi
no_newline "the bundle" "$bundle"
cd -- "$bundle" 2>/dev/null || die 2 "bundle $bundle is not a directory" "pass the bundle directory"
bundle=$(pwd)

# a split bundle's folder: the one vol-NN folder holding manifest.json is the bundle, the others its volumes
top=
if [ ! -e manifest.json ] && [ ! -L manifest.json ]; then
  primary=
  for v in vol-[0-9][0-9] vol-[0-9][0-9][0-9]; do
    [ -d "$v" ] && [ ! -L "$v" ] || continue
    if [ -e "$v/manifest.json" ] || [ -L "$v/manifest.json" ]; then
      [ -z "$primary" ] || die 4 "$bundle holds manifest.json on $primary and on $v: two bundles in one place" \
        "remove the folder that is not part of the bundle you were given, or copy the bundle again"
      primary=$v
    fi
  done
  if [ -n "$primary" ]; then
    top=$bundle
    bundle=$bundle/$primary
    cd -- "$bundle" || die 6 "cannot enter $bundle"
  fi
fi

safe_tmpdir
tmp=$(mktemp -d) || die 6 "cannot create a temporary directory" "set TMPDIR to a writable directory"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# --- bundle files: looked at with ls (no open), opened only once known to be regular files ------------
probe() { # PATH: ftype (missing, file, dir, link, other) and fsize, from one lstat; never opens the file
  ftype=missing
  fsize=
  if [ ! -e "$1" ] && [ ! -L "$1" ]; then return 0; fi
  _line=$(ls -ldn -- "$1" 2>/dev/null) || { ftype=other; return 0; }
  case $_line in
  -*)
    ftype=file
    set -f
    # shellcheck disable=SC2086
    set -- $_line
    set +f
    fsize=$5
    ;;
  d*) ftype=dir ;;
  l*) ftype=link ;;
  *) ftype=other ;;
  esac
}
copy() { head -c "$2" <"$1" >"$3" 2>/dev/null; } # SRC MAX DEST: at most MAX bytes of a regular file
sha_of() {
  _sum=$(sha256sum <"$1") || return 1
  printf '%s\n' "${_sum%% *}"
}
locate() { # PATH: src = the first of the bundle and its other volumes that has PATH (as any kind of file)
  src=
  while IFS= read -r _dir; do
    if [ -e "$_dir/$1" ] || [ -L "$_dir/$1" ]; then
      src=$_dir/$1
      return 0
    fi
  done <"$tmp/dirs"
  return 1
}
on_volume() { # a hint naming the volume that holds PATH, if the bundle is split
  _vol=$(awk -v p="$1" '$1 == p { print $2; exit }' "$tmp/volumes")
  if [ -n "$_vol" ]; then printf ' (on %s)\n' "$_vol"; fi
}
not_regular() { # LABEL: dies with exit 4 for a link or special file (ftype set by probe)
  case $ftype in
  link) die 4 "$1 is a symbolic link" "bundles hold regular files and directories only; copy the files, not links" ;;
  file) ;;
  *) die 4 "$1 is not a regular file" "bundles hold regular files only; copy the bundle again" ;;
  esac
}

# --- 1. trusted keys: each one's fingerprint names its signature file ----------------------------------
keyn=0
fps=
add_key() { # $1: a .pub file
  [ -f "$1" ] && [ -r "$1" ] || die 2 "cannot read trusted key $1" "pass the PREFIX.pub written by 'airgap keygen'"
  keyn=$((keyn + 1))
  _key=$tmp/key.$keyn
  copy "$1" 65537 "$_key" || die 2 "cannot read trusted key $1"
  [ "$(wc -c <"$_key")" -le 65536 ] || die 3 "trusted key $1 is not a PEM public key" "pass the PREFIX.pub written by 'airgap keygen'"
  _kind=$(openssl pkey -pubin -in "$_key" -noout -text 2>/dev/null | head -n 1)
  case $_kind in
  "ED25519 Public-Key:"*) ;;
  "") die 3 "trusted key $1 is not a PEM public key" "pass the PREFIX.pub written by 'airgap keygen'" ;;
  *) die 3 "trusted key $1 is not an Ed25519 public key" "pass the PREFIX.pub written by 'airgap keygen'" ;;
  esac
  _fp=$(openssl pkey -pubin -in "$_key" -outform DER 2>/dev/null | sha256sum) || die 6 "cannot compute the fingerprint of $1"
  _fp=${_fp%% *}
  case $_fp in *[!0-9a-f]*) die 6 "cannot compute the fingerprint of $1" ;; esac
  [ "${#_fp}" = 64 ] || die 6 "cannot compute the fingerprint of $1"
  case " $fps " in *" $_fp "*) return 0 ;; esac # the same key twice counts once
  fps="$fps $_fp"
  mv -f "$_key" "$tmp/key-$_fp" || die 6 "cannot write to $tmp"
  printf '%s\n' "$1" >"$tmp/key-$_fp.name"
}
printf '%s' "$trusts" >"$tmp/trusts"
while IFS= read -r t; do
  if [ -d "$t" ]; then
    found=0
    for k in "$t"/*.pub; do
      [ -e "$k" ] || [ -L "$k" ] || continue
      add_key "$k"
      found=1
    done
    [ "$found" = 1 ] || die 2 "trust directory $t holds no .pub file" "put the signers' .pub files in it"
  else
    add_key "$t"
  fi
done <"$tmp/trusts"
[ -n "$fps" ] || die 2 "no trusted key given" "pass --trust KEY.pub (a bundle is never accepted without one)"

# --- 2. manifest.json: a private copy, capped before it is read; nothing else of it is ever read -------
probe manifest.json
case $ftype in
missing) die 3 "$bundle/manifest.json is missing: this is not a complete bundle" "copy the whole bundle again (split: every vol-NN folder)" ;;
*) not_regular manifest.json ;;
esac
[ "$fsize" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is $fsize bytes, larger than any manifest airgap writes (16 MiB)" "do not use this bundle"
copy manifest.json $((MAX_MANIFEST + 1)) "$tmp/manifest.json" || die 6 "cannot read manifest.json" "copy the bundle again"
[ "$(wc -c <"$tmp/manifest.json")" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is larger than any manifest airgap writes (16 MiB)" "do not use this bundle"

# --- 3. signatures: only signatures/<fingerprint>.sig of the trusted keys, each checked against the copy
probe signatures
case $ftype in missing | dir) ;; *) not_regular signatures ;; esac
valid=0
signers=
for fp in $fps; do
  sig=signatures/$fp.sig
  probe "$sig"
  [ "$ftype" != missing ] || continue
  not_regular "$sig"
  name=$(cat "$tmp/key-$fp.name")
  bad_sig="the manifest or the signature was changed after signing; do not use this bundle"
  [ "$fsize" = 64 ] || die 5 "signature $sig of trusted key $name is $fsize bytes, not 64: it does not verify" "$bad_sig"
  copy "$sig" 65 "$tmp/sig" || die 6 "cannot read $sig"
  [ "$(wc -c <"$tmp/sig")" = 64 ] || die 5 "signature $sig of trusted key $name is not 64 bytes: it does not verify" "$bad_sig"
  said=$(openssl pkeyutl -verify -pubin -inkey "$tmp/key-$fp" -rawin -in "$tmp/manifest.json" -sigfile "$tmp/sig" 2>&1)
  case $said in
  *"Signature Verified Successfully"*) valid=$((valid + 1)); signers="$signers $(printf '%.16s' "$fp") ($name)," ;;
  *"Verification Failure"*) die 5 "signature $sig of trusted key $name does not match manifest.json" "$bad_sig" ;;
  *) die 6 "openssl cannot check $sig: $(printf '%s\n' "$said" | head -n 1)" "install openssl 1.1.1 or 3.x" ;;
  esac
done
if [ "$valid" = 0 ]; then
  die 5 "manifest.json carries no valid signature by a trusted key ($(echo $fps | wc -w) given)" \
    "check that --trust names the signer's public key; never use a bundle that fails this"
fi
[ "$valid" -ge "$threshold" ] || die 5 "only $valid valid signature(s) from distinct trusted keys, $threshold required" \
  "ask for more signatures ('airgap sign'), or trust the keys that signed it"
out "OK: manifest.json signed by${signers%,}: $valid of $threshold required"

# --- 4. the signed manifest: airgap writes it canonically (sorted keys, two-space indent, a field a line)
awk -F'"' -v dir="$tmp" '
  function num(s) { sub(/^: /, "", s); sub(/,$/, "", s); return s }
  /^  "[a-z_]+": / { sect = $2 }
  /^  "schema_version": / { print "schema_version", num($3) > (dir "/meta") }
  /^  "name": "/ { print "name", $4 > (dir "/meta") }
  /^  "sequence": / { print "sequence", num($3) > (dir "/meta") }
  /^  "expires": / { print "expires", ($3 ~ /^: null,?$/ ? "-" : $4) > (dir "/meta") }
  /^  "base": / { print "base", ($3 ~ /^: null,?$/ ? "-" : $4) > (dir "/meta") }
  (sect == "parts" || sect == "files" || sect == "blobs") && /^    \{$/ { path = ""; sha = ""; size = ""; digest = "" }
  (sect == "parts" || sect == "files") && /^      "path": "/ { path = $4 }
  (sect == "parts" || sect == "files") && /^      "sha256": "/ { sha = $4 }
  (sect == "parts" || sect == "files" || sect == "blobs") && /^      "size": / { size = num($3) }
  sect == "blobs" && /^      "digest": "/ { digest = $4 }
  (sect == "parts" || sect == "files") && /^    \},?$/ { print sha, size, path > (dir "/" sect) }
  sect == "blobs" && /^    \},?$/ { print digest, size > (dir "/blobs") }
  sect == "volumes" && /^      "name": "/ { vol = $4 }
  sect == "volumes" && /^        "/ { print $2, vol > (dir "/volumes") }
' "$tmp/manifest.json" || die 6 "awk cannot read $tmp/manifest.json"
for f in meta parts files blobs volumes; do : >>"$tmp/$f"; done
meta() { awk -v k="$1" '$1 == k { n++; v = substr($0, length(k) + 2) } END { if (n == 1) print v }' "$tmp/meta"; }
[ "$(meta schema_version)" = 1 ] || die 3 "manifest.json is not schema_version 1" "use airgap verify"
bundle_name=$(meta name)
sequence=$(meta sequence)
expires=$(meta expires)
base=$(meta base)
printf '%s\n' "$bundle_name" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9._/-]{0,199}' || die 3 "manifest.json has no valid bundle name"
printf '%s\n' "$sequence" | grep -Eqx '0|[1-9][0-9]{0,18}' || die 3 "manifest.json has no valid sequence"
printf '%s\n' "$expires" | grep -Eqx -- '-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z' || die 3 "manifest.json has no valid expiry date"
[ -s "$tmp/parts" ] || die 3 "manifest.json lists no part"
bad=$(grep -Evx '[0-9a-f]{64} (0|[1-9][0-9]{0,14}) parts/[0-9a-f]{64}\.[0-9]{5}\.zst' "$tmp/parts" | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists a part airgap never writes: ${bad#* * }" "do not use this bundle"
bad=$(grep -Evx '[0-9a-f]{64} (0|[1-9][0-9]{0,14}) (installer/[A-Za-z0-9_+-][A-Za-z0-9._+-]*(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*|volume-[0-9]{2,3}\.txt|sbom/[0-9a-f]{64}\.cdx\.json)' "$tmp/files" | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists a path airgap never writes: ${bad#* * }" "do not use this bundle"
bad=$(awk 'length($3) > 300 { print $3; exit }' "$tmp/files")
[ -z "$bad" ] || die 3 "manifest.json lists a path airgap never writes: $bad" "do not use this bundle"
bad=$(grep -Evx 'sha256:[0-9a-f]{64} (0|[1-9][0-9]{0,14})' "$tmp/blobs" | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists a blob airgap never writes: $bad" "do not use this bundle"
cat "$tmp/parts" "$tmp/files" >"$tmp/all"
awk '{ print $3 }' "$tmp/all" >"$tmp/listed"
bad=$(sort "$tmp/listed" | uniq -d | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists $bad twice" "do not use this bundle"
# every blob that parts carry, with its size: "HEX SIZE", and its parts in order (the index is 5 digits)
awk 'NR == FNR { size[substr($1, 8)] = $2; next }
  { hex = substr($3, 7, 64); if (!(hex in size)) { print "missing " hex; exit 1 } if (!(hex in seen)) { seen[hex] = 1; print hex, size[hex] } }
' "$tmp/blobs" "$tmp/parts" >"$tmp/carried" || die 3 "manifest.json lists parts of blob sha256:$(sed -n 's/^missing //p' "$tmp/carried") but not the blob" "do not use this bundle"

if [ "$expires" != - ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  if ! awk -v now="$now" -v end="$expires" 'BEGIN { exit !(now < end) }'; then
    [ "$allow_expired" = 1 ] || die 5 "the bundle expired at $expires" "ask for a fresh bundle, or pass --allow-expired to audit an old one"
    say "warning: the bundle expired at $expires (allowed by --allow-expired)"
  fi
fi

# --- 5. where the files are: the bundle, then its other volumes (--from, else its vol-NN siblings) -----
printf '%s\n' "$bundle" >"$tmp/dirs"
if [ -n "$froms" ]; then
  printf '%s' "$froms" >>"$tmp/dirs"
elif [ -s "$tmp/volumes" ]; then
  here=${bundle##*/}
  parent=${bundle%/*}
  awk '{ print $2 }' "$tmp/volumes" | sort -u >"$tmp/volnames"
  if grep -qxF -- "$here" "$tmp/volnames"; then
    while IFS= read -r v; do
      [ "$v" != "$here" ] || continue
      printf '%s\n' "$v" | grep -Eqx 'vol-[0-9]{2,3}' || continue
      if [ -d "$parent/$v" ] && [ ! -L "$parent/$v" ]; then printf '%s\n' "$parent/$v" >>"$tmp/dirs"; fi
    done <"$tmp/volnames"
  fi
fi
if [ -n "$top" ]; then # a split bundle's folder holds its vol-NN folders only
  (cd "$top" && find . \( -path './vol-[0-9][0-9]' -o -path './vol-[0-9][0-9][0-9]' \) -type d -prune -o ! -name . -print) >"$tmp/found" 2>/dev/null ||
    die 6 "cannot list the files in $top"
  if [ -s "$tmp/found" ]; then
    first=$(head -n 1 "$tmp/found")
    probe "$top/${first#./}"
    case $ftype in file | dir) ;; *) not_regular "$top/${first#./}" ;; esac
    [ "$allow_unexpected" = 1 ] || die 4 "$top/${first#./} is not part of the signed bundle" \
      "remove it if you know where it came from (or pass --allow-unexpected); otherwise copy the bundle again"
    say "warning: unexpected file $top/${first#./} (not part of the signed bundle; allowed)"
  fi
fi

# --- 6. nothing unsigned rides along: no links, no special files, no unlisted files --------------------
: >"$tmp/unexpected"
: >"$tmp/claimed"
while IFS= read -r dir; do
  case $dir in "$bundle") where= ;; *) where="$dir/" ;; esac
  (cd "$dir" && find . -name "*$nl*" -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $dir"
  [ ! -s "$tmp/found" ] || die 4 "a file name in $dir holds a line break: $(head -c 200 "$tmp/found")" "bundles never hold such names; copy the bundle again"
  (cd "$dir" && find . ! -type f ! -type d -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $dir"
  if [ -s "$tmp/found" ]; then
    first=$(head -n 1 "$tmp/found")
    probe "$dir/${first#./}"
    not_regular "$where${first#./}"
    die 4 "$where${first#./} is not a regular file" "bundles hold regular files only; copy the bundle again"
  fi
  (cd "$dir" && find . -type f -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $dir"
  : >"$tmp/badsigs"
  if [ -z "$where" ] && [ -d "$dir/signatures" ]; then
    (cd "$dir" && find ./signatures -type f ! -size 64c -print) >"$tmp/badsigs" 2>/dev/null || die 6 "cannot list $dir/signatures"
    nsig=$(find "$dir/signatures" -type f -print 2>/dev/null | wc -l)
    [ "$nsig" -le 256 ] || die 4 "signatures/ holds $nsig files; a bundle carries at most 256 signatures" \
      "the bundle was stuffed with files; copy it again from the original medium"
  fi
  # a listed file is expected only in the first directory that holds it: the one it is read from (locate)
  where=$where awk '
    FILENAME == ARGV[1] { ok[$0] = 1; next }
    FILENAME == ARGV[2] { claimed[$0] = 1; next }
    FILENAME == ARGV[3] { bad[substr($0, 3)] = 1; next }
    { p = substr($0, 3) }
    (p in ok) && !(p in claimed) { next }
    ENVIRON["where"] == "" && p == "manifest.json" { next }
    ENVIRON["where"] == "" && p ~ /^signatures\/[0-9a-f]+\.sig$/ && length(p) == 79 && !(p in bad) { next }
    { print ENVIRON["where"] p }
  ' "$tmp/listed" "$tmp/claimed" "$tmp/badsigs" "$tmp/found" | sort >>"$tmp/unexpected"
  awk 'NR == FNR { ok[$0] = 1; next } (substr($0, 3) in ok) { print substr($0, 3) }' "$tmp/listed" "$tmp/found" >>"$tmp/claimed"
done <"$tmp/dirs"
if [ -s "$tmp/unexpected" ]; then
  n=$(wc -l <"$tmp/unexpected")
  first=$(head -n 1 "$tmp/unexpected")
  if [ "$allow_unexpected" = 0 ]; then
    more=
    [ "$n" -le 1 ] || more=" (and $((n - 1)) more)"
    die 4 "file $first in the bundle is not part of the signed bundle$more" \
      "remove it if you know where it came from (or pass --allow-unexpected); otherwise copy the bundle again"
  fi
  sed 's/^/warning: unexpected file /; s/$/ (not part of the signed bundle; allowed)/' "$tmp/unexpected" | escape >&2
fi

# --- 7. every listed file and part: present, a regular file of its size, matching its sha256 -----------
# check SHA256 SIZE PATH [DEST]: as read once from the medium, or (with DEST) from a private copy made there
check() {
  _sha=$1
  _size=$2
  shift 2
  locate "$1" || die 4 "$1 is missing$(on_volume "$1")" "copy it again from the original medium, or mount the medium that holds it and pass it with --from"
  probe "$src"
  not_regular "$1"
  [ "$fsize" = "$_size" ] || die 4 "$1 is $fsize bytes, the manifest says $_size" "copy it again from the original medium"
  if [ -n "${2:-}" ]; then
    rm -f "$2"
    copy "$src" $((_size + 1)) "$2" || die 6 "cannot read $1 into $tmp (an I/O error, or no room there)" "check the medium, or set TMPDIR to a directory with room for one part"
    _got=$(sha_of "$2") || die 6 "cannot hash $2"
  else
    _got=$(head -c $((_size + 1)) <"$src" | sha256sum) || die 6 "cannot read $1" "check the medium"
    _got=${_got%% *}
  fi
  [ "$_got" = "$_sha" ] || die 4 "$1 does not match its sha256 in the manifest" "copy it again from the original medium"
}
# every part is there and of the right size before any is read
while read -r _ size path; do
  locate "$path" || die 4 "part $path is missing$(on_volume "$path")" \
    "copy it again from the original medium, or mount the medium that holds it and pass it with --from"
  probe "$src"
  not_regular "part $path"
  [ "$fsize" = "$size" ] || die 4 "part $path is $fsize bytes, the manifest says $size" "copy it again from the original medium"
done <"$tmp/parts"
nfiles=0
while read -r sha size path; do
  check "$sha" "$size" "$path"
  nfiles=$((nfiles + 1))
done <"$tmp/files"
out "OK: $nfiles files match the signed manifest (installer, load plans, listings, wheels)"

nparts=$(wc -l <"$tmp/parts")
nparts=$((nparts + 0))
nblobs=$(wc -l <"$tmp/carried")
nblobs=$((nblobs + 0))
if [ "$have_zstd" = 0 ]; then
  while read -r sha size path; do check "$sha" "$size" "$path"; done <"$tmp/parts"
  out "OK: $nparts parts match the signed manifest"
  say "note: zstd is not installed: the $nblobs blobs the parts carry were not decompressed and checked against their digests (install zstd to check them too)"
else
  largest=$(awk '$2 + 0 > max + 0 { max = $2 } END { print max + 0 }' "$tmp/parts")
  room=$(df -P -k "$tmp" 2>/dev/null | awk 'NR == 2 { print $4 }')
  case $room in
  '' | *[!0-9]*) ;;
  *) [ "$room" -ge $((largest / 1024 + 1)) ] ||
    die 6 "not enough room in $tmp for one part ($largest bytes): each part is checked from a private copy there" \
      "set TMPDIR to a directory with room for one part" ;;
  esac
  # each blob: its parts in order, each copied, its copy hashed, then decompressed into the blob's hash
  while read -r hex size; do
    : >"$tmp/failed"
    got=$(
      grep " parts/$hex\.[0-9]*\.zst\$" "$tmp/parts" | sort -k3,3 | while read -r psha psize path; do
        (check "$psha" "$psize" "$path" "$tmp/part") 2>"$tmp/failed" || { echo "$?" >"$tmp/failcode"; exit 1; }
        cat "$tmp/part" || { echo 6 >"$tmp/failcode"; echo "error: cannot read the copy of $path in $tmp" >"$tmp/failed"; exit 1; }
      done | zstd -dcq 2>/dev/null | head -c $((size + 1)) | sha256sum
    )
    if [ -s "$tmp/failcode" ]; then
      cat "$tmp/failed" >&2
      exit "$(cat "$tmp/failcode")"
    fi
    [ "${got%% *}" = "$hex" ] || die 4 "the parts of blob sha256:$hex do not decompress to it (their sha256 matched: the signed parts are not what they claim)" \
      "do not use this bundle; ask the security team"
  done <"$tmp/carried"
  out "OK: $nparts parts match the signed manifest; the $nblobs blobs they carry decompress to their digests"
fi
if [ "$base" != - ]; then
  say "note: a delta bundle: the layers it leaves to its base bundle are not in it, so not checked here (install checks them against their digests)"
fi
if [ "$expires" = - ]; then until=never; else until=$expires; fi
out "AUDIT PASSED: bundle $bundle_name, sequence $sequence, expires $until"
exit 0

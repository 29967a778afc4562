#!/bin/sh
# Install an airgap bundle without Python: check the signatures with openssl, then stream the parts
# through zstd into 'docker load'.  POSIX sh (dash, busybox ash).
#
#   sh installer/install.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--replace] [--allow-expired]
#        [--allow-downgrade] [--allow-unexpected] [--platform OS/ARCH[/VARIANT]] [--from DIR ...]
#        [--state FILE] [BUNDLE]
#
# BUNDLE defaults to the bundle this script sits in; --from adds directories holding more parts (the
# other volumes of a bundle split over several media).  --trust takes .pub files or directories of them;
# at least --threshold distinct trusted keys must have signed manifest.json.  Needs docker, openssl
# (1.1.1 or 3.x), sha256sum, zstd, awk, dd, head, find, ls, sort and mktemp.  Exit codes are airgap's:
# 0 ok, 2 usage, 3 not a bundle, 4 damaged, missing or unlisted file, 5 signature, expiry or rollback,
# 6 Docker, tools or environment, 7 a tag would move.
#
# Every byte it uses comes from a private copy it checked: manifest.json (at most 16 MiB) is copied
# first, its signatures checked against the copy and only the copy is parsed; the load plan and its
# blocks are copied and checked against the manifest; each part is copied, hashed, then decompressed
# from that copy into the load, one part at a time.  Temporary space ($TMPDIR): the manifest, the
# plan and blocks, and one part.  A part that fails cuts the upload before the archive's manifest.json,
# so the engine loads nothing.  Like 'airgap install' it never moves a tag silently, refuses links,
# special files and files the manifest does not list, and keeps the same rollback state file.
set -u
umask 077
LC_ALL=C
export LC_ALL

MAX_MANIFEST=16777216 # 16 MiB: airgap's own cap on manifest.json (bundle.py MAX_MANIFEST_BYTES)
nl='
'

# --- messages: every name printed goes through esc, so no file name can forge a line -----------------
# escape: stdin to stdout with control and non-ASCII bytes as \xNN and backslashes doubled; with
# "join", line breaks too (one message, one line), otherwise line by line
escape() {
  if ! command -v awk >/dev/null 2>&1; then
    cat
    return
  fi
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
  say "usage: install.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--replace] [--allow-expired] [--allow-downgrade] [--allow-unexpected] [--platform OS/ARCH] [--from DIR ...] [--state FILE] [BUNDLE]"
  exit 2
}

die() {
  code=$1
  say "error: $2"
  if [ -n "${3:-}" ]; then say "hint: $3"; fi
  exit "$code"
}

absolute() { # $1 path -> an absolute path, relative to the directory the script was started in
  case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$start" "$1" ;; esac
}

# --- options -------------------------------------------------------------------------------------------
start=$(pwd)
trusts=
threshold=1
replace=0
allow_expired=0
allow_downgrade=0
allow_unexpected=0
platform=
bundle=
froms=
state=
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
  --replace) replace=1; shift ;;
  --allow-expired) allow_expired=1; shift ;;
  --allow-downgrade) allow_downgrade=1; shift ;;
  --allow-unexpected) allow_unexpected=1; shift ;;
  --platform) [ $# -ge 2 ] || usage; platform=$2; shift 2 ;;
  --platform=*) platform=${1#--platform=}; shift ;;
  --from) [ $# -ge 2 ] || usage; add_from "$2"; shift 2 ;;
  --from=*) add_from "${1#--from=}"; shift ;;
  --state) [ $# -ge 2 ] || usage; state=$2; shift 2 ;;
  --state=*) state=${1#--state=}; shift ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ; exit 0 ;;
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
[ -n "$trusts" ] || die 2 "--trust KEY.pub is required" "give the public key (or a directory of .pub files) of the security team that signed the bundle"
case $threshold in
'' | *[!0-9]*) die 2 "--threshold must be a whole number of at least 1, not $threshold" ;;
esac
[ "${#threshold}" -le 6 ] && [ "$threshold" -ge 1 ] || die 2 "--threshold must be a whole number of at least 1, not $threshold"
threshold=$((threshold + 0))
case $platform in *[!A-Za-z0-9._/-]*) die 2 "--platform $platform is not like linux/amd64" ;; esac

for tool in docker openssl sha256sum zstd awk dd head find ls sort mktemp; do
  command -v "$tool" >/dev/null 2>&1 || die 6 "$tool is not installed" "install it (Debian: docker.io, openssl, coreutils, zstd, mawk, findutils)"
done
if [ -z "$state" ]; then
  if [ -n "${AIRGAP_STATE:-}" ]; then
    state=$AIRGAP_STATE
  elif [ -n "${XDG_STATE_HOME:-}" ]; then
    state=$XDG_STATE_HOME/airgap/installed.json
  elif [ -n "${HOME:-}" ]; then
    state=$HOME/.local/state/airgap/installed.json
  else
    die 6 "no place for the install state: HOME is not set" "set AIRGAP_STATE (or pass --state FILE)"
  fi
fi
no_newline "the install state" "$state"
state=$(absolute "$state")

if [ -z "$bundle" ]; then
  bundle=$(cd "$(dirname -- "$0")/.." && pwd) || die 2 "cannot find the bundle around $0"
fi
no_newline "the bundle" "$bundle"
cd -- "$bundle" 2>/dev/null || die 2 "bundle $bundle is not a directory" "pass the bundle directory"
bundle=$(pwd)

tmp=$(mktemp -d) || die 6 "cannot create a temporary directory" "set TMPDIR to a writable directory with room for one part"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
printf '%s\n' "$bundle" >"$tmp/dirs"
printf '%s' "$froms" >>"$tmp/dirs"

# --- bundle files: looked at with ls (no open), opened only once known to be regular files ------------
# probe PATH: ftype (missing, file, dir, link, other) and fsize, from one lstat; never opens the file.
probe() {
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

# copy SRC MAX DEST: at most MAX bytes of the regular file SRC into the private DEST
copy() {
  head -c "$2" <"$1" >"$3" 2>/dev/null
}

sha_of() { # the sha256 of a private copy
  _sum=$(sha256sum <"$1") || return 1
  printf '%s\n' "${_sum%% *}"
}

# locate PATH: src = the first of the bundle and the --from directories that has PATH (as any kind of file)
locate() {
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
  if [ -n "$_vol" ]; then
    printf ' (on %s)\n' "$_vol"
  fi
}

not_regular() { # $1 label; dies with exit 4 for a link or special file (ftype set by probe)
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
missing) die 3 "$bundle/manifest.json is missing: this is not a complete bundle" "pack or copy the bundle again" ;;
*) not_regular manifest.json ;;
esac
[ "$fsize" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is $fsize bytes, larger than any manifest airgap writes (16 MiB)" "do not use this bundle"
copy manifest.json $((MAX_MANIFEST + 1)) "$tmp/manifest.json" || die 6 "cannot read manifest.json" "copy the bundle again"
[ "$(wc -c <"$tmp/manifest.json")" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is larger than any manifest airgap writes (16 MiB)" "do not use this bundle"

# --- 3. signatures: only signatures/<fingerprint>.sig of the trusted keys, each checked against the copy
probe signatures
case $ftype in missing | dir) ;; *) not_regular signatures ;; esac
valid=0
for fp in $fps; do
  sig=signatures/$fp.sig
  probe "$sig"
  [ "$ftype" != missing ] || continue
  not_regular "$sig"
  name=$(cat "$tmp/key-$fp.name")
  bad_sig="the manifest or the signature was changed after signing; do not install this bundle"
  [ "$fsize" = 64 ] || die 5 "signature $sig of trusted key $name is $fsize bytes, not 64: it does not verify" "$bad_sig"
  copy "$sig" 65 "$tmp/sig" || die 6 "cannot read $sig"
  [ "$(wc -c <"$tmp/sig")" = 64 ] || die 5 "signature $sig of trusted key $name is not 64 bytes: it does not verify" "$bad_sig"
  said=$(openssl pkeyutl -verify -pubin -inkey "$tmp/key-$fp" -rawin -in "$tmp/manifest.json" -sigfile "$tmp/sig" 2>&1)
  case $said in
  *"Signature Verified Successfully"*) valid=$((valid + 1)) ;;
  *"Verification Failure"*) die 5 "signature $sig of trusted key $name does not match manifest.json" "$bad_sig" ;;
  *) die 6 "openssl cannot check $sig: $(printf '%s\n' "$said" | head -n 1)" "install openssl 1.1.1 or 3.x" ;;
  esac
done
if [ "$valid" = 0 ]; then
  die 5 "manifest.json carries no valid signature by a trusted key ($(echo $fps | wc -w) given)" \
    "check that --trust names the signer's public key; never install a bundle that fails this"
fi
[ "$valid" -ge "$threshold" ] || die 5 "only $valid valid signature(s) from distinct trusted keys, $threshold required" \
  "ask for more signatures ('airgap sign'), or trust the keys that signed it"

# --- 4. the signed manifest: airgap writes it canonically (sorted keys, two-space indent, a field a line)
awk -F'"' -v dir="$tmp" '
  function num(s) { sub(/^: /, "", s); sub(/,$/, "", s); return s }
  /^  "[a-z_]+": / { sect = $2 }
  /^  "schema_version": / { print "schema_version", num($3) > (dir "/meta") }
  /^  "name": "/ { print "name", $4 > (dir "/meta") }
  /^  "sequence": / { print "sequence", num($3) > (dir "/meta") }
  /^  "expires": / { print "expires", ($3 ~ /^: null,?$/ ? "-" : $4) > (dir "/meta") }
  (sect == "parts" || sect == "files") && /^    \{$/ { path = ""; sha = ""; size = "" }
  (sect == "parts" || sect == "files") && /^      "path": "/ { path = $4 }
  (sect == "parts" || sect == "files") && /^      "sha256": "/ { sha = $4 }
  (sect == "parts" || sect == "files") && /^      "size": / { size = num($3) }
  (sect == "parts" || sect == "files") && /^    \},?$/ { print sha, size, path > (dir "/" sect) }
  sect == "volumes" && /^      "name": "/ { vol = $4 }
  sect == "volumes" && /^        "/ { print $2, vol > (dir "/volumes") }
' "$tmp/manifest.json" || die 6 "awk cannot read $tmp/manifest.json"
: >>"$tmp/meta"
: >>"$tmp/parts"
: >>"$tmp/files"
: >>"$tmp/volumes"
meta() { awk -v k="$1" '$1 == k { n++; v = substr($0, length(k) + 2) } END { if (n == 1) print v }' "$tmp/meta"; }
[ "$(meta schema_version)" = 1 ] || die 3 "manifest.json is not schema_version 1" "use airgap's Python installer"
bundle_name=$(meta name)
sequence=$(meta sequence)
expires=$(meta expires)
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
cat "$tmp/parts" "$tmp/files" >"$tmp/all"
awk '{ print $3 }' "$tmp/all" >"$tmp/listed"
bad=$(sort "$tmp/listed" | uniq -d | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists $bad twice" "do not use this bundle"

if [ "$expires" != - ] && [ "$allow_expired" = 0 ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  awk -v now="$now" -v end="$expires" 'BEGIN { exit !(now < end) }' ||
    die 5 "the bundle expired at $expires" "ask for a fresh bundle, or pass --allow-expired if you accept an old one"
fi

# --- 5. rollback: the same state file as 'airgap install' ----------------------------------------------
manifest_sha256=$(sha_of "$tmp/manifest.json") || die 6 "cannot hash $tmp/manifest.json"
state_dir=$(dirname -- "$state")
uid=$(id -u)
# Whoever can replace the state file can reset the rollback mark: like 'airgap install' (and ssh with its
# keys), the file must be ours, regular and not group/other-writable; its directory not a link, ours or
# root's and not group/other-writable; the directories above it (as written and as resolved) ours or
# root's and not group/other-writable unless sticky (/tmp).
elsewhere="keep the state in a directory only you can write (--state DIR/installed.json, or \$AIRGAP_STATE)"
dir_ok() { # DIR self|above
  if [ "$2" = self ]; then
    _found=$(find "$1" -prune -type d \( -user "$uid" -o -user 0 \) ! -perm -020 ! -perm -002 -print 2>/dev/null)
  else
    _found=$(find "$1/." -prune -type d \( -user "$uid" -o -user 0 \) \( -perm -1000 -o ! -perm -020 ! -perm -002 \) -print 2>/dev/null)
  fi
  [ -n "$_found" ]
}
dirs_above_ok() { # DIR: every existing directory above DIR
  _d=$1
  while [ "$_d" != / ] && [ "$_d" != . ]; do
    _d=$(dirname -- "$_d")
    if [ -e "$_d" ] && ! dir_ok "$_d" above; then
      die 6 "install state directory $state_dir is below $_d, which someone else owns or can write to" "$elsewhere"
    fi
  done
}
state_safe() {
  if [ -e "$state_dir" ] || [ -L "$state_dir" ]; then
    dir_ok "$state_dir" self || die 6 "install state directory $state_dir is a link, not a directory, someone else's, or writable by group or others" \
      "chmod go-w it (it must be a directory of yours), or $elsewhere"
  fi
  dirs_above_ok "$state_dir"
  _d=$state_dir
  while [ ! -d "$_d" ]; do _d=$(dirname -- "$_d"); done
  _real=$(cd -P -- "$_d" 2>/dev/null && pwd -P) || die 6 "cannot check the directories above $state_dir"
  if [ "$_real" != "$_d" ]; then
    dir_ok "$_real" above || die 6 "install state directory $state_dir is below $_real, which someone else owns or can write to" "$elsewhere"
    dirs_above_ok "$_real"
  fi
  if [ -L "$state" ]; then
    die 6 "install state $state is a symbolic link" "replace the link $state by the file itself (links here could be redirected)"
  fi
  if [ -e "$state" ]; then
    [ -n "$(find "$state" -prune -type f -user "$uid" ! -perm -020 ! -perm -002 -print 2>/dev/null)" ] ||
      die 6 "install state $state is not a regular file of yours, or others can write to it" \
        "check who wrote it; if you trust its content: chown and chmod go-w it, otherwise move it away"
  fi
}
# read_state: the entries of the state file, one 'NAME SEQUENCE MANIFEST_SHA256 INSTALLED' a line, into
# $tmp/state.entries.  Only the exact layout airgap writes (json.dumps, indent 2, sorted keys) is read.
read_state() {
  : >"$tmp/state.entries"
  state_safe
  [ -e "$state" ] || return 0
  copy "$state" 16777217 "$tmp/state.json" || die 6 "cannot read install state $state"
  awk '
    function bad() { failed = 1; exit 1 }
    st == 0 { if ($0 != "{") bad(); st = 1; next }
    st == 1 { if ($0 == "  \"bundles\": {}") { st = 8; next } if ($0 != "  \"bundles\": {") bad(); st = 2; next }
    st == 2 {
      if ($0 !~ /^    "[A-Za-z0-9][A-Za-z0-9._\/-]*": \{$/) bad()
      name = substr($0, 6, length($0) - 9)
      if (name in seen) bad()
      seen[name] = 1; st = 3; next
    }
    st == 3 {
      if ($0 !~ /^      "installed": "[0-9A-Za-z:.+-]+",$/) bad()
      when = substr($0, 21, length($0) - 22); st = 4; next
    }
    st == 4 {
      if ($0 !~ /^      "manifest_sha256": "[0-9a-f]+",$/ || length($0) != 92) bad()
      sha = substr($0, 27, 64); st = 5; next
    }
    st == 5 {
      if ($0 !~ /^      "sequence": (0|[1-9][0-9]*)$/ || length($0) > 38) bad()
      seq = substr($0, 19); st = 6; next
    }
    st == 6 {
      print name, seq, sha, when
      if ($0 == "    },") { st = 2; next }
      if ($0 == "    }") { st = 7; next }
      bad()
    }
    st == 7 { if ($0 != "  }") bad(); st = 8; next }
    st == 8 { if ($0 != "}") bad(); st = 9; next }
    st == 9 { bad() }
    END { if (!failed && st != 9) exit 1 }
  ' "$tmp/state.json" >"$tmp/state.entries" ||
    die 3 "install state $state is not in the layout airgap writes" \
      "let 'airgap install' rewrite it, or move it away to start afresh (this forgets which bundles were installed)"
}
older() { # older A B: sequence A is lower than sequence B (decimal strings, any length)
  awk -v a="$1" -v b="$2" 'BEGIN { exit !(length(a) < length(b) || (length(a) == length(b) && ("" a) < ("" b))) }'
}
read_state
seen=$(awk -v n="$bundle_name" '$1 == n { print $2, $3 }' "$tmp/state.entries")
if [ -n "$seen" ] && [ "$allow_downgrade" = 0 ]; then
  seen_sequence=${seen% *}
  seen_sha256=${seen#* }
  if older "$sequence" "$seen_sequence"; then
    die 5 "bundle $bundle_name sequence $sequence is older than sequence $seen_sequence, installed here before" \
      "this looks like a rollback to an old bundle; --allow-downgrade installs it anyway"
  fi
  if [ "$sequence" = "$seen_sequence" ] && [ "$manifest_sha256" != "$seen_sha256" ]; then
    die 5 "bundle $bundle_name sequence $sequence differs from the bundle with that sequence installed here before" \
      "two different bundles carry the same name and sequence; ask the security team which is genuine"
  fi
fi

# --- 6. nothing unsigned rides along: no links, no special files, no unlisted files --------------------
: >"$tmp/unexpected"
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
  # signatures live beside the manifest only, 64 bytes each, at most 256 of them
  : >"$tmp/badsigs"
  if [ -z "$where" ] && [ -d "$dir/signatures" ]; then
    (cd "$dir" && find ./signatures -type f ! -size 64c -print) >"$tmp/badsigs" 2>/dev/null || die 6 "cannot list $dir/signatures"
    nsig=$(find "$dir/signatures" -type f -print 2>/dev/null | wc -l)
    [ "$nsig" -le 256 ] || die 4 "signatures/ holds $nsig files; a bundle carries at most 256 signatures" \
      "the bundle was stuffed with files; copy it again from the original medium"
  fi
  # a listed file is expected only in the first directory that holds it: the one it is read from (locate)
  : >>"$tmp/claimed"
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

# --- 7. the load plan for this engine's platform: only plans the signed manifest lists -----------------
if [ -z "$platform" ]; then
  info=$(docker info --format '{{.OSType}}/{{.Architecture}}' 2>"$tmp/err") ||
    die 6 "the Docker engine does not answer: $(head -n 1 "$tmp/err")" "check DOCKER_HOST and that dockerd runs"
  case $info in
  */x86_64) info=${info%/*}/amd64 ;;
  */aarch64) info=${info%/*}/arm64 ;;
  esac
  platform=$info
  explicit=0
else
  explicit=1
fi
plan=installer/docker-$(printf '%s' "$platform" | tr / -).plan
grep -Ex 'installer/docker-[A-Za-z0-9._+-]+\.plan' "$tmp/listed" >"$tmp/plans" || :
if ! grep -qxF -- "$plan" "$tmp/plans"; then
  if [ "$(wc -l <"$tmp/plans")" = 1 ] && [ "$explicit" = 0 ]; then
    plan=$(cat "$tmp/plans")
    guess=1
  else
    die 2 "the bundle has no image for $platform" "choose one with --platform"
  fi
else
  guess=0
fi
blocks=${plan%.plan}.blocks
grep -qxF -- "$blocks" "$tmp/listed" || die 3 "manifest.json lists $plan but not $blocks" "do not use this bundle"

# fetch PATH [DEST]: check a listed file against the manifest; with DEST, from a private copy made there
# (the bytes that are used later), without, as read once (bytes nothing uses)
fetch() {
  _entry=$(awk -v p="$1" '$3 == p { print $1, $2; exit }' "$tmp/all")
  _sha=${_entry% *}
  _size=${_entry#* }
  locate "$1" || die 4 "$1 is missing$(on_volume "$1")" "copy the bundle again, or mount that medium and pass it with --from"
  probe "$src"
  not_regular "$1"
  [ "$fsize" = "$_size" ] || die 4 "$1 is $fsize bytes, the manifest says $_size" "copy the named file again from the original medium"
  if [ -n "${2:-}" ]; then
    copy "$src" $((_size + 1)) "$2" || die 6 "cannot read $1 into $tmp (an I/O error, or no room there)" "check the medium, or set TMPDIR to a directory with room"
    _got=$(sha_of "$2") || die 6 "cannot hash $2"
  else
    _got=$(head -c $((_size + 1)) <"$src" | sha256sum) || die 6 "cannot read $1" "check the medium"
    _got=${_got%% *}
  fi
  [ "$_got" = "$_sha" ] || die 4 "$1 does not match its sha256 in the manifest" "copy the named file again from the original medium"
}
fetch "$plan" "$tmp/plan"
fetch "$blocks" "$tmp/blocks"
# the other signed files (this script, other plans, volume listings, wheels) are checked too, though
# nothing of them is used
while read -r _ _ path; do
  [ "$path" = "$plan" ] || [ "$path" = "$blocks" ] || fetch "$path"
done <"$tmp/files"
if [ "$guess" = 1 ]; then
  say "note: the bundle is for $(sed -n '1s/^# airgap docker-load plan v1 for //p' "$tmp/plan"), the engine is $platform; loading it anyway"
fi

# the plan, checked line by line, joined with each part's size and sha256 from the manifest
block_count=$(($(wc -c <"$tmp/blocks") / 512))
awk -v blocks="$block_count" '
  function bad(why) { print "line " FNR ": " why > "/dev/stderr"; failed = 1; exit 1 }
  function count(s) { return s ~ /^(0|[1-9][0-9]*)$/ && length(s) <= 12 }
  NR == FNR { sha[$3] = $1; size[$3] = $2; next }
  /^#/ { next }
  $1 == "image" {
    if ($2 !~ /^sha256:[0-9a-f]+$/ || length($2) != 71) bad("not an image ID")
    for (i = 3; i <= NF; i++) if ($i !~ /^[A-Za-z0-9][A-Za-z0-9._\/:@-]*$/) bad("not an image name")
    images++; print; next
  }
  $1 == "base" { if (NF != 2 || $2 !~ /^sha256:[0-9a-f]+$/ || length($2) != 71) bad("not a layer digest"); print; next }
  $1 == "block" {
    if (NF != 3 || !count($2) || !count($3) || $2 + $3 > blocks) bad("not a block range of the blocks file")
    print; next
  }
  $1 == "part" { if (NF != 2 || !($2 in sha)) bad("names a part the manifest does not list"); print "part", sha[$2], size[$2], $2; next }
  $1 == "zero" { if (NF != 2 || !count($2) || $2 + 0 < 1 || $2 + 0 > 511) bad("not tar padding"); print; next }
  { bad("not a load plan line") }
  END { if (!failed && !images) { print "no image" > "/dev/stderr"; exit 1 } }
' "$tmp/parts" "$tmp/plan" >"$tmp/ops" 2>"$tmp/err" ||
  die 3 "$plan is not a load plan: $(head -n 1 "$tmp/err")" "do not use this bundle"

# --- 8. never move a tag silently ----------------------------------------------------------------------
while read -r op id refs; do
  [ "$op" = image ] || continue
  for ref in $refs; do
    current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null </dev/null) || current=
    if [ -n "$current" ] && [ "$current" != "$id" ] && [ "$replace" = 0 ]; then
      die 7 "tag $ref already names image $current, the bundle has $id" "pass --replace to move the tag to the bundle's image"
    fi
  done
done <"$tmp/ops"

# --- 9. every part the plan needs is there, a regular file of the right size, before anything is sent --
while read -r op _ size path; do
  [ "$op" = part ] || continue
  locate "$path" || die 4 "part $path is missing$(on_volume "$path")" \
    "copy it again from the original medium, or mount the medium that holds it and pass it with --from"
  probe "$src"
  not_regular "part $path"
  [ "$fsize" = "$size" ] || die 4 "part $path is $fsize bytes, the manifest says $size" "copy it again from the original medium"
done <"$tmp/ops"

# room in TMPDIR for the largest part (its copy lives there while it streams)
largest=$(awk '$1 == "part" && $3 + 0 > max + 0 { max = $3 } END { print max + 0 }' "$tmp/ops")
room=$(df -P -k "$tmp" 2>/dev/null | awk 'NR == 2 { print $4 }')
case $room in
'' | *[!0-9]*) ;;
*) [ "$room" -ge $((largest / 1024 + 1)) ] ||
  die 6 "not enough room in $tmp for one part ($largest bytes): each part is checked from a private copy there" \
    "set TMPDIR to a directory with room for one part" ;;
esac

# --- 10. stream a docker-save archive into the engine: headers from the blocks, layers from the parts ---
# Each part is copied, its copy hashed, and the copy decompressed; on any failure the stream stops
# before the archive's manifest.json (the last block), so the engine loads nothing.
failed() { printf '%s\n%s\n' "$1" "$2" >"$tmp/emit-failed"; }
emit_part() { # SHA256 SIZE PATH
  locate "$3" || { failed 4 "part $3 is missing$(on_volume "$3")"; return 1; }
  probe "$src"
  [ "$ftype" = file ] || { failed 4 "part $3 is not a regular file"; return 1; }
  rm -f "$tmp/part"
  copy "$src" $(($2 + 1)) "$tmp/part" || { failed 6 "cannot read part $3 into $tmp (an I/O error, or no room there)"; return 1; }
  [ "$(sha_of "$tmp/part")" = "$1" ] || { failed 4 "part $3 does not match its sha256 in the manifest"; return 1; }
  zstd -dcq <"$tmp/part" || { failed pipe "zstd could not decompress part $3 into the load"; return 1; }
  rm -f "$tmp/part"
}
emit() {
  while read -r op a b c; do
    case $op in
    block) dd if="$tmp/blocks" bs=512 skip="$a" count="$b" 2>/dev/null || { failed pipe "cannot send the plan's blocks"; return 1; } ;;
    part) emit_part "$a" "$b" "$c" || return 1 ;;
    zero) dd if=/dev/zero bs="$a" count=1 2>/dev/null || { failed pipe "cannot send tar padding"; return 1; } ;;
    esac
  done <"$tmp/ops"
}
needs=$(grep -c '^base ' "$tmp/ops")
if [ "$needs" -gt 0 ]; then
  say "note: this is a delta bundle: the engine must already hold $needs layer(s) of its base bundle (install that first)"
fi
say "loading into Docker (each part is checked against the signed manifest as it goes)..."
{ emit || :; } | docker load >"$tmp/load" 2>&1
loaded=$?
emit_failed=$(head -n 1 "$tmp/emit-failed" 2>/dev/null) || emit_failed=
case $emit_failed in
4) die 4 "$(sed -n 2p "$tmp/emit-failed"); the upload was cut off before its end, so the engine loaded nothing" \
  "copy the named part again from the original medium, then run the installer again" ;;
6) die 6 "$(sed -n 2p "$tmp/emit-failed"); the upload was cut off before its end, so the engine loaded nothing" \
  "check the medium and the room in TMPDIR, then run the installer again" ;;
esac
if [ "$loaded" != 0 ] && [ "$needs" -gt 0 ] && grep -q 'no such file' "$tmp/load"; then
  die 2 "docker load failed: the engine lacks layers of this delta's base bundle" "install the base bundle first, or use 'airgap install --base'"
fi
[ "$loaded" = 0 ] || die 6 "docker load failed: $(tail -n 1 "$tmp/load")" "check the Docker engine and its free disk space"
[ ! -f "$tmp/emit-failed" ] || die 6 "$(sed -n 2p "$tmp/emit-failed")" "check the Docker engine and run the installer again"

# --- 11. the engine holds the bundle's images under their names ----------------------------------------
while read -r op id refs; do
  [ "$op" = image ] || continue
  docker image inspect "$id" >/dev/null 2>&1 </dev/null || die 6 "the engine did not keep image $id after loading it"
  for ref in $refs; do
    current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null </dev/null) || current=
    [ "$current" = "$id" ] || die 6 "after loading, tag $ref does not name image $id"
  done
  out "loaded: ${refs:-(untagged)}  $id"
done <"$tmp/ops"

# --- 12. remember the newest sequence installed (never lowered by --allow-downgrade) -------------------
read_state
current=$(awk -v n="$bundle_name" '$1 == n { print $2 }' "$tmp/state.entries")
if [ -z "$current" ] || ! older "$sequence" "$current"; then
  mkdir -p -- "$state_dir" || die 6 "cannot create $state_dir for the install state" "the images are loaded; set AIRGAP_STATE to a writable place"
  state_safe
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  {
    awk -v n="$bundle_name" '$1 != n' "$tmp/state.entries"
    printf '%s %s %s %s\n' "$bundle_name" "$sequence" "$manifest_sha256" "$now"
  } | sort -k1,1 | awk '
    { e[++n] = $0 }
    END {
      print "{"
      if (n == 0) print "  \"bundles\": {}"
      else {
        print "  \"bundles\": {"
        for (i = 1; i <= n; i++) {
          split(e[i], f, " ")
          print "    \"" f[1] "\": {"
          print "      \"installed\": \"" f[4] "\","
          print "      \"manifest_sha256\": \"" f[3] "\","
          print "      \"sequence\": " f[2]
          print (i < n ? "    }," : "    }")
        }
        print "  }"
      }
      print "}"
    }' >"$tmp/state.new" || die 6 "cannot write the install state"
  new=$(mktemp "$state_dir/.installed.json.XXXXXX") || die 6 "cannot write in $state_dir" "the images are loaded; the install state was not updated"
  if ! cat "$tmp/state.new" >"$new" || ! mv -f -- "$new" "$state"; then
    rm -f -- "$new"
    die 6 "cannot write install state $state" "the images are loaded; the install state was not updated"
  fi
fi
exit 0

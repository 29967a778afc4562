#!/bin/sh
# Install an airgap bundle without Python: check the signatures with openssl, then stream the parts
# through zstd into 'docker load'.  POSIX sh (dash, busybox ash).
#
#   sh installer/install.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--replace] [--allow-expired]
#        [--allow-downgrade] [--allow-unexpected] [--platform OS/ARCH[/VARIANT]] [--from DIR ...]
#        [--one-drive] [--media-command CMD] [--state FILE] [BUNDLE]
#
# BUNDLE defaults to the bundle this script sits in; --from adds directories holding more parts (the
# other volumes of a bundle split over several media).  With --one-drive, BUNDLE is a drive's mount point
# (or the folder above where each disc is mounted under its label): the discs of a split bundle go in one
# after another, vol-01 first, then in any order, each asked for on stderr and answered by a line on stdin
# (Enter); stdin at its end stops the install naming the disc (exit 4).  --media-command CMD (implies
# --one-drive) runs 'CMD VOLUME...' with sh instead of asking; it exits 0 once one of them is in.  The
# script first re-runs itself from a private copy, so that the disc it came from can be ejected.
# --trust takes .pub files or directories of them; at least --threshold distinct trusted keys must have
# signed manifest.json.  Needs docker, openssl (1.1.1 or 3.x), sha256sum, zstd, awk, dd, head, find, ls,
# sort and mktemp.  Exit codes are airgap's: 0 ok, 2 usage, 3 not a bundle, 4 damaged, missing or unlisted
# file, or a disc that did not come, 5 signature, expiry or rollback, 6 Docker, tools or environment, 7 a
# tag would move.
#
# Every byte it uses comes from a private copy it checked: manifest.json (at most 16 MiB) is copied
# first, its signatures checked against the copy and only the copy is parsed; the load plan and its
# blocks are copied and checked against the manifest; each part is copied, hashed, then decompressed
# from that copy into the load, one part at a time.  Temporary space ($TMPDIR): the manifest, the
# plan and blocks, and one part.  A part that fails cuts the upload before the archive's manifest.json,
# so the engine loads nothing.  Like 'airgap install' it never moves a tag silently, refuses links,
# special files and files the manifest does not list, keeps the same rollback state file, and loads
# nothing when the engine holds every image under all its names ('already present', no part read).  A
# disc is known by its signed listing (volume-NN.txt), which is only hashed; it is checked as it comes
# (its parts there with their sizes, its signed files matching, nothing else on it) before a part is read.
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
  say "usage: install.sh --trust KEY.pub|DIR [--trust ...] [--threshold N] [--replace] [--allow-expired] [--allow-downgrade] [--allow-unexpected] [--platform OS/ARCH] [--from DIR ...] [--one-drive] [--media-command CMD] [--state FILE] [BUNDLE]"
  exit 2
}

in_upload=0
die() {
  if [ "$in_upload" = 1 ]; then # inside the upload's feeder (a subshell): the main script reports it
    printf '%s\n' "$1" >"$tmp/emit-failed"
    printf '%s\n' "$2" >"$tmp/emit-failed.msg"
    printf '%s\n' "${3:-}" >"$tmp/emit-failed.hint"
    exit 1
  fi
  code=$1
  say "error: $2"
  if [ -n "${3:-}" ]; then say "hint: $3"; fi
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

absolute() { # $1 path -> an absolute path, relative to the directory the script was started in
  case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$start" "$1" ;; esac
}

# --- with --one-drive, run from a private copy: the disc this script came from can then be ejected ------
self_copy=
self_home=
if [ -n "${AIRGAP_SH_COPY:-}" ] && [ "$0" = "$AIRGAP_SH_COPY/install.sh" ]; then
  self_copy=$AIRGAP_SH_COPY
  self_home=${AIRGAP_SH_HOME:-}
  trap 'rm -rf "$self_copy"' EXIT
else
  _skip=0
  _drive=0
  for _a in "$@"; do
    if [ "$_skip" = 1 ]; then
      _skip=0
      continue
    fi
    case $_a in
    --) break ;;
    --trust | --threshold | --platform | --from | --state) _skip=1 ;;
    --one-drive | --media-command | --media-command=*) _drive=1 ;;
    esac
  done
  if [ "$_drive" = 1 ] && [ -f "$0" ] && [ -r "$0" ]; then
    safe_tmpdir
    _copy=$(mktemp -d) || die 6 "cannot create a temporary directory" "set TMPDIR to a writable directory"
    head -c 1048576 <"$0" >"$_copy/install.sh" || die 6 "cannot copy $0 to $_copy"
    _home=$(cd "$(dirname -- "$0")/.." 2>/dev/null && pwd) || _home=
    _sh=sh
    if [ -n "${BASH_VERSION:-}" ] && [ -n "${BASH:-}" ]; then _sh=$BASH; fi
    AIRGAP_SH_COPY=$_copy AIRGAP_SH_HOME=$_home exec "$_sh" "$_copy/install.sh" "$@"
  fi
fi
unset AIRGAP_SH_COPY AIRGAP_SH_HOME

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
one_drive=0
media_command=
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
  --one-drive) one_drive=1; shift ;;
  --media-command) [ $# -ge 2 ] || usage; media_command=$2; one_drive=1; shift 2 ;;
  --media-command=*) media_command=${1#--media-command=}; one_drive=1; shift ;;
  --from=*) add_from "${1#--from=}"; shift ;;
  --state) [ $# -ge 2 ] || usage; state=$2; shift 2 ;;
  --state=*) state=${1#--state=}; shift ;;
  -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' ; exit 0 ;;
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
if [ "$one_drive" = 1 ]; then
  [ -z "$froms" ] || die 2 "--from and --one-drive do not go together" \
    "with one drive the discs come one after another into BUNDLE; with every medium mounted, pass each with --from"
  case $media_command in *[![:space:]]*) ;; ?*) die 2 "--media-command is empty" "name a command that loads the disc it is given" ;; esac
  exec 3<&0 # the answers to the prompts: stdin, kept as fd 3 while loops read files on stdin
fi
answer="then send a line on stdin"
if [ -t 0 ]; then answer="then press Enter"; fi
found=
why=
first_vol=
first_listing=
label=
nvols=0
manifest_size=0
got_vol=
got_dir=
rdir=

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

if [ -z "$bundle" ] && [ -n "$self_copy" ]; then
  bundle=$self_home
  [ -n "$bundle" ] || die 2 "cannot find the bundle around the script" "pass the drive's mount point as BUNDLE"
elif [ -z "$bundle" ]; then
  bundle=$(cd "$(dirname -- "$0")/.." && pwd) || die 2 "cannot find the bundle around $0"
fi
no_newline "the bundle" "$bundle"
if [ "$one_drive" = 1 ]; then # never the working directory: the drive's discs must come out
  _b=$(cd -- "$bundle" 2>/dev/null && pwd) ||
    die 2 "$bundle is not a directory" "pass the drive's mount point, e.g. /media/cdrom"
  bundle=$_b
  no_newline "the bundle" "$bundle"
else
  cd -- "$bundle" 2>/dev/null || die 2 "bundle $bundle is not a directory" "pass the bundle directory"
  bundle=$(pwd)
fi
media=$bundle
home=$bundle # the directory holding manifest.json and signatures/

safe_tmpdir
tmp=$(mktemp -d) || die 6 "cannot create a temporary directory" "set TMPDIR to a writable directory with room for one part"
cleanup() {
  rm -rf "$tmp"
  if [ -n "$self_copy" ]; then rm -rf "$self_copy"; fi
}
trap cleanup EXIT
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
  if [ "$one_drive" = 1 ]; then # from the disc its volume is on, asked for by name while another is in
    _lvol=$(awk -v p="$1" '$1 == p { print $2; exit }' "$tmp/volumes")
    [ -n "$_lvol" ] || return 1
    require "$_lvol" "$(short "$1")"
    src=$rdir/$1
    return 0
  fi
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

# --- one drive, many discs (--one-drive) --------------------------------------------------------------
# A disc is the drive's directory, or a folder directly below it (not a link), holding a volume listing
# or manifest.json at its top.  A disc is known by its listing, volume-NN.txt: its bytes must match the
# sha256 the signed manifest gives for that name (it is hashed, never parsed; its first line is only
# shown, escaped), and the first volume's disc must carry the very manifest.json in use.  Only paths the
# signed manifest lists (their grammar checked) are looked for, each on the disc its volume is in.
lexists() { [ -e "$1" ] || [ -L "$1" ]; }
is_listing_name() {
  case $1 in volume-[0-9][0-9].txt | volume-[0-9][0-9][0-9].txt) return 0 ;; esac
  return 1
}
commas() { printf '%s\n' "$@" | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $0 }'; }
carries() { # DIR: holds manifest.json or a volume listing at its top
  if lexists "$1/manifest.json"; then return 0; fi
  for _cf in "$1"/volume-*.txt; do
    if is_listing_name "${_cf##*/}" && lexists "$_cf"; then return 0; fi
  done
  return 1
}
candidates() { # the directories that can hold a disc now, one a line, into $tmp/cands
  : >"$tmp/cands"
  if carries "$media"; then
    printf '%s\n' "$media" >"$tmp/cands"
    return 0
  fi
  for _cd in "$media"/*; do
    case $_cd in *"$nl"*) continue ;; esac
    probe "$_cd"
    if [ "$ftype" = dir ] && carries "$_cd"; then printf '%s\n' "$_cd" >>"$tmp/cands"; fi
  done
}
claim() { # FILE: what a listing says it is (its first line), as ' (it says "...")'; only from a regular file
  probe "$1"
  [ "$ftype" = file ] || return 0
  _said=$(head -c 4096 <"$1" 2>/dev/null | head -n 1 | head -c 160)
  if [ -n "$_said" ]; then printf ' (it says "%s")' "$_said"; fi
}
refuse() { # why the disc in the drive is not taken (the first reason found at this look)
  if [ ! -s "$tmp/refused" ]; then printf '%s' "$1" >"$tmp/refused"; fi
}
judge() { # DIR NAME: a listing in DIR, and the volume it shows to be at hand ($tmp/athand.new), or why not
  _jvol=$(awk -v p="$2" '$1 == p { print $2; exit }' "$tmp/listings")
  if [ -z "$_jvol" ]; then
    refuse "the disc in $1 is not a volume of $label: $2 names no volume of it (it has $nvols)$(claim "$1/$2")"
    return 0
  fi
  _jent=$(awk -v p="$2" '$3 == p { print $1, $2; exit }' "$tmp/files")
  _jsize=${_jent#* }
  probe "$1/$2"
  if [ "$ftype" != file ] || [ "$fsize" != "$_jsize" ] || ! copy "$1/$2" $((_jsize + 1)) "$tmp/listing" ||
    [ "$(sha_of "$tmp/listing")" != "${_jent% *}" ]; then
    refuse "$1/$2 is not the signed listing of $_jvol of $label$(claim "$1/$2"): the disc belongs to another bundle, or was changed"
    return 0
  fi
  if [ "$_jvol" = "$first_vol" ]; then
    probe "$1/manifest.json"
    _jwhy=
    if [ "$ftype" = missing ]; then
      _jwhy="has no manifest.json"
    elif [ "$ftype" != file ] || [ "$fsize" != "$manifest_size" ] ||
      ! copy "$1/manifest.json" $((manifest_size + 1)) "$tmp/disc-manifest" ||
      [ "$(sha_of "$tmp/disc-manifest")" != "$manifest_sha256" ]; then
      _jwhy="carries another manifest.json than the signed one in use"
    fi
    if [ -n "$_jwhy" ]; then
      refuse "the disc in $1 holding $_jvol $_jwhy: a disc of another bundle, or a changed one"
      return 0
    fi
  fi
  printf '%s %s\n' "$_jvol" "$1" >>"$tmp/athand.new"
}
look() { # what the drive holds now, into $tmp/athand ("VOLUME DIR" a line); a disc that came is checked first
  candidates
  : >"$tmp/athand.new"
  : >"$tmp/refused"
  while IFS= read -r _ld; do
    for _lf in "$_ld"/volume-*.txt; do
      if is_listing_name "${_lf##*/}" && lexists "$_lf"; then judge "$_ld" "${_lf##*/}"; fi
    done
  done <"$tmp/cands"
  awk 'FILENAME == ARGV[1] { old[$0] = 1; next } !($0 in old)' "$tmp/athand" "$tmp/athand.new" >"$tmp/arrived"
  mv -f "$tmp/athand.new" "$tmp/athand"
  while IFS= read -r _ll; do
    check_disc "${_ll%% *}" "${_ll#* }"
  done <"$tmp/arrived"
}
dir_of() { awk -v v="$1" '$1 == v { print substr($0, length(v) + 2); exit }' "$tmp/athand"; }

# scan_dir DIR SHOWN: the regular files below DIR into $tmp/found (./PATH a line); a name with a line break,
# a link or a special file anywhere below it stops the install (4) without being opened
scan_dir() {
  (cd "$1" && find . -name "*$nl*" -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $1"
  [ ! -s "$tmp/found" ] || die 4 "a file name in $1 holds a line break: $(head -c 200 "$tmp/found")" "bundles never hold such names; copy the bundle again"
  (cd "$1" && find . ! -type f ! -type d -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $1"
  if [ -s "$tmp/found" ]; then
    _first=$(head -n 1 "$tmp/found")
    probe "$1/${_first#./}"
    not_regular "$2${_first#./}"
    die 4 "$2${_first#./} is not a regular file" "bundles hold regular files only; copy the bundle again"
  fi
  (cd "$1" && find . -type f -print) >"$tmp/found" 2>/dev/null || die 6 "cannot list the files in $1"
}

# check_disc VOLUME DIR: what a disc must be before a part is read from it: nothing on it but what its volume
# lists (and, on the first, the manifest and 64-byte signatures), every part there at its size, every other
# signed file on it matching its sha256
check_disc() {
  _cv=$1
  _cdir=$2
  scan_dir "$_cdir" "$_cdir/"
  awk -v v="$_cv" '$2 == v { print $1 }' "$tmp/volumes" >"$tmp/disc-listed"
  : >"$tmp/badsigs"
  _cfirst=0
  if [ "$_cv" = "$first_vol" ]; then
    _cfirst=1
    if [ -d "$_cdir/signatures" ]; then
      (cd "$_cdir" && find ./signatures -type f ! -size 64c -print) >"$tmp/badsigs" 2>/dev/null || die 6 "cannot list $_cdir/signatures"
      _nsig=$(find "$_cdir/signatures" -type f -print 2>/dev/null | wc -l)
      [ "$_nsig" -le 256 ] || die 4 "signatures/ on $_cv holds $_nsig files; a bundle carries at most 256 signatures" \
        "the disc was stuffed with files; burn or copy it again from the bundle's $_cv folder"
    fi
  fi
  awk -v first="$_cfirst" '
    FILENAME == ARGV[1] { ok[$0] = 1; next }
    FILENAME == ARGV[2] { bad[substr($0, 3)] = 1; next }
    { p = substr($0, 3) }
    p in ok { next }
    first && p == "manifest.json" { next }
    first && p ~ /^signatures\/[0-9a-f]+\.sig$/ && length(p) == 79 && !(p in bad) { next }
    { print p }
  ' "$tmp/disc-listed" "$tmp/badsigs" "$tmp/found" | sort >"$tmp/unexpected"
  if [ -s "$tmp/unexpected" ]; then
    _n=$(wc -l <"$tmp/unexpected")
    _first=$(head -n 1 "$tmp/unexpected")
    if [ "$allow_unexpected" = 0 ]; then
      _more=
      [ "$_n" -le 1 ] || _more=" (and $((_n - 1)) more)"
      die 4 "file $_cdir/$_first on $_cv is not part of the signed bundle$_more" \
        "remove it if you know where it came from (or pass --allow-unexpected); otherwise burn or copy the disc again from the bundle's $_cv folder"
    fi
    _cdir=$_cdir awk '{ print "warning: unexpected file " ENVIRON["_cdir"] "/" $0 " (not part of the signed bundle; allowed)" }' "$tmp/unexpected" | escape >&2
  fi
  awk 'FILENAME == ARGV[1] { on[$0] = 1; next } $3 in on' "$tmp/disc-listed" "$tmp/parts" >"$tmp/disc-parts"
  while read -r _csha _csize _cpath; do
    probe "$_cdir/$_cpath"
    [ "$ftype" != missing ] || die 4 "part $_cpath is missing on $_cv (in $_cdir)" "burn or copy the disc again from the bundle's $_cv folder"
    not_regular "part $_cpath"
    [ "$fsize" = "$_csize" ] || die 4 "part $_cpath on $_cv is $fsize bytes, the manifest says $_csize" "burn or copy the disc again from the bundle's $_cv folder"
  done <"$tmp/disc-parts"
  awk 'FILENAME == ARGV[1] { on[$0] = 1; next } $3 in on' "$tmp/disc-listed" "$tmp/files" >"$tmp/disc-files"
  while read -r _csha _csize _cpath; do
    probe "$_cdir/$_cpath"
    [ "$ftype" != missing ] || die 4 "$_cpath is missing on $_cv (in $_cdir)" "burn or copy the disc again from the bundle's $_cv folder"
    not_regular "$_cpath"
    [ "$fsize" = "$_csize" ] || die 4 "$_cpath on $_cv is $fsize bytes, the manifest says $_csize" "burn or copy the disc again from the bundle's $_cv folder"
    _got=$(head -c $((_csize + 1)) <"$_cdir/$_cpath" | sha256sum) || die 6 "cannot read $_cpath on $_cv" "check the disc"
    [ "${_got%% *}" = "$_csha" ] || die 4 "$_cpath on $_cv does not match its sha256 in the manifest" "burn or copy the disc again from the bundle's $_cv folder"
  done <"$tmp/disc-files"
  grep -qxF -- "$_cv" "$tmp/seen" || printf '%s\n' "$_cv" >>"$tmp/seen"
  say "$_cv in $_cdir: its signed listing matches and every file it lists is there"
}

holds() { # VOLUME: what it carries, for a prompt: "the manifest, parts 1-11 of 40, 3.9 MiB"
  awk -v v="$1" -v first="$first_vol" '
    FILENAME == ARGV[1] { if ($2 == v) on[$1] = 1; next }
    FILENAME == ARGV[2] { n++; if ($3 in on) { num[++k] = n; size += $2 }; next }
    $3 in on { size += $2 }
    END {
      out = (v == first ? "the manifest, " : "")
      if (k == 1) out = out "part " num[1] " of " n ", "
      else if (k > 1 && num[k] - num[1] == k - 1) out = out "parts " num[1] "-" num[k] " of " n ", "
      else if (k > 1) out = out k " of " n " parts, "
      split("B KiB MiB GiB TiB", unit, " ")
      for (i = 1; size >= 1024 && i < 5; i++) size /= 1024
      print out (i == 1 ? sprintf("%d B", size) : sprintf("%.1f %s", size, unit[i]))
    }' "$tmp/volumes" "$tmp/parts" "$tmp/files"
}
describe() { # VOLUME...: the volumes asked for, for a prompt
  if [ $# = 1 ]; then
    printf '%s (%s)\n' "$1" "$(holds "$1")"
  else
    printf 'any of %s (the volumes still to read, in any order)\n' "$(commas "$@")"
  fi
}
short() { # PATH: a part's path with its blob's hex cut short, for a prompt
  case $1 in
  parts/*)
    _sh=${1#parts/}
    printf 'the next part to read (parts/%.12s...%s)\n' "${_sh%%.*}" ".${_sh#*.}"
    ;;
  *) printf 'the next file to read (%s)\n' "$1" ;;
  esac
}
found_text() { # VOLUME...: $found, what the drive holds now and why it does not do (empty when it holds nothing)
  found=
  if [ -s "$tmp/refused" ]; then
    found="refused: $(cat "$tmp/refused")"
    return 0
  fi
  [ -s "$tmp/athand" ] || return 0
  _held=$(awk '{ print $1 }' "$tmp/athand" | sort -u | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $0 }')
  if [ $# = 1 ] && [ -n "$why" ]; then
    found="the drive holds $_held; $why is on $1"
  elif [ -z "$(awk '{ print $1 }' "$tmp/athand" | grep -vxF -f "$tmp/seen")" ]; then
    found="the drive holds $_held, read already"
  else
    found="the drive holds $_held, not needed now"
  fi
}
# ask ATTEMPT WHAT VOLUME...: ask for one of the volumes: the prompt on stderr, answered by a line on stdin
# (saved as fd 3); or --media-command, run once per request.  Fails when no answer will come.
ask() {
  _aattempt=$1
  _awhat=$2
  shift 2
  if [ -n "$media_command" ]; then
    [ "$_aattempt" = 1 ] || return 1
    AIRGAP_MEDIA=$media AIRGAP_VOLUME=$1 AIRGAP_VOLUMES=$(printf '%s\n' "$@" | awk '{ printf "%s%s", (NR > 1 ? " " : ""), $0 }') \
      sh -c "$media_command"' "$@"' airgap-media-command "$@" </dev/null >&2 3<&-
    _arc=$?
    [ "$_arc" = 0 ] || die 6 "--media-command $media_command failed (exit $_arc) when asked for $(commas "$@")" \
      "it is run as CMD VOLUME... and must exit 0 once one of those discs is in $media"
    return 0
  fi
  if [ -n "$found" ]; then say "$found"; fi
  say "insert $_awhat into $media, $answer"
  _aline=
  IFS= read -r _aline <&3 || [ -n "$_aline" ]
}
gave_up() { # VOLUME...: no answer will come
  if [ -s "$tmp/refused" ]; then
    die 4 "$(cat "$tmp/refused")" "insert $1 of $label; if that is the disc, burn or copy it again from the bundle's $1 folder"
  fi
  _gheld=
  if [ -s "$tmp/athand" ]; then _gheld=" (it holds $(awk '{ print $1 }' "$tmp/athand" | sort -u | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $0 }'))"; fi
  _gverb=is
  [ $# = 1 ] || _gverb=are
  die 4 "$(commas "$@") of $label $_gverb not in $media$_gheld" \
    "insert the disc labelled so and run the same command again; with one drive, answer each prompt (Enter on a terminal, a line on stdin) or give --media-command"
}
next_of() { # VOLUME...: $got_vol and $got_dir, one of them at hand (the first in order), asking while none is
  _nattempt=0
  while :; do
    look
    for _nv in "$@"; do
      got_dir=$(dir_of "$_nv")
      if [ -n "$got_dir" ]; then
        got_vol=$_nv
        return 0
      fi
    done
    _nattempt=$((_nattempt + 1))
    found_text "$@"
    ask "$_nattempt" "$(describe "$@")" "$@" || gave_up "$@"
  done
}
require() { # VOLUME [WHY]: $rdir, the directory holding it, asking for its disc by name while it is not in
  why=${2:-}
  next_of "$1"
  rdir=$got_dir
  why=
}
find_first_disc() { # $home: the disc (directory) that carries manifest.json, asking for vol-01 while none does
  _fattempt=0
  while :; do
    candidates
    : >"$tmp/homes"
    : >"$tmp/claims"
    while IFS= read -r _fd; do
      if lexists "$_fd/manifest.json"; then printf '%s\n' "$_fd" >>"$tmp/homes"; fi
      for _ff in "$_fd"/volume-*.txt; do
        if is_listing_name "${_ff##*/}" && lexists "$_ff"; then printf '%s%s\n' "$_ff" "$(claim "$_ff")" >>"$tmp/claims"; fi
      done
    done <"$tmp/cands"
    if [ "$(wc -l <"$tmp/homes")" -gt 1 ]; then
      die 4 "$media holds manifest.json in $(sed -n 1p "$tmp/homes") and in $(sed -n 2p "$tmp/homes"): two bundles in one place" \
        "leave only the discs (or folders) of the bundle you were given there"
    fi
    if [ -s "$tmp/homes" ]; then
      home=$(cat "$tmp/homes")
      return 0
    fi
    found=
    if [ -s "$tmp/claims" ]; then found="the drive holds $(awk '{ printf "%s%s", (NR > 1 ? "; " : ""), $0 }' "$tmp/claims"); the manifest is on the first volume"; fi
    _fattempt=$((_fattempt + 1))
    ask "$_fattempt" "vol-01 (the manifest and the signatures)" vol-01 ||
      die 3 "$media holds no bundle manifest${found:+: $found}" "insert the first volume (vol-01, it carries manifest.json)"
  done
}
# emit_discs: the upload read disc by disc: members that read no disc first, then again and again a member
# whose first part is on a disc at hand (one read whole from the discs at hand first), asking for any disc
# where a member still to send starts when none is; the archive's manifest.json last.  Each member is one
# tar header, its parts and padding; docker load takes them in any order before the manifest.json.
emit_discs() {
  awk -v ops="$tmp/gops" -v pend="$tmp/pending" -v last="$tmp/lastgroup" '
    NR == FNR { vol[$1] = $2; next }
    $1 == "image" || $1 == "base" { next }
    $1 == "block" && prev != "block" { g++ }
    { print g, $0 > ops; prev = $1 }
    $1 == "part" && !((g, vol[$4]) in seen) { seen[g, vol[$4]] = 1; reads[g] = reads[g] " " vol[$4] }
    END { for (i = 1; i <= g; i++) print i reads[i] > pend; print g > last }
  ' "$tmp/volumes" "$tmp/ops" || { failed 6 "awk cannot read the load plan"; return 1; }
  _elast=$(cat "$tmp/lastgroup")
  for _eg in $(awk -v l="$_elast" 'NF == 1 && $1 != l { print $1 }' "$tmp/pending"); do
    emit_group "$_eg" || return 1
  done
  awk -v l="$_elast" 'NF > 1 && $1 != l' "$tmp/pending" >"$tmp/pending.new"
  mv -f "$tmp/pending.new" "$tmp/pending"
  while [ -s "$tmp/pending" ]; do
    look
    _epick=$(awk '
      FILENAME == ARGV[1] { at[$1] = 1; next }
      $2 in at {
        whole = 1
        for (i = 3; i <= NF; i++) if (!($i in at)) whole = 0
        if (whole && w == "") w = $1
        if (r == "") r = $1
      }
      END { print (w != "" ? w : r) }' "$tmp/athand" "$tmp/pending")
    if [ -n "$_epick" ]; then
      awk -v g="$_epick" '$1 != g' "$tmp/pending" >"$tmp/pending.new"
      mv -f "$tmp/pending.new" "$tmp/pending"
      emit_group "$_epick" || return 1
    else
      # shellcheck disable=SC2046
      next_of $(awk '{ print $2 }' "$tmp/pending" | sort -u)
    fi
  done
  emit_group "$_elast"
}
emit_group() { # G: one member of the upload, each part from the disc that holds it
  awk -v g="$1" '$1 == g { print substr($0, length(g) + 2) }' "$tmp/gops" >"$tmp/group.$1"
  emit_ops "$tmp/group.$1"
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
if [ "$one_drive" = 1 ]; then find_first_disc; fi
probe "$home/manifest.json"
case $ftype in
missing) die 3 "$home/manifest.json is missing: this is not a complete bundle" "pack or copy the bundle again" ;;
*) not_regular manifest.json ;;
esac
[ "$fsize" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is $fsize bytes, larger than any manifest airgap writes (16 MiB)" "do not use this bundle"
copy "$home/manifest.json" $((MAX_MANIFEST + 1)) "$tmp/manifest.json" || die 6 "cannot read manifest.json" "copy the bundle again"
[ "$(wc -c <"$tmp/manifest.json")" -le "$MAX_MANIFEST" ] || die 3 "manifest.json is larger than any manifest airgap writes (16 MiB)" "do not use this bundle"

# --- 3. signatures: only signatures/<fingerprint>.sig of the trusted keys, each checked against the copy
probe "$home/signatures"
case $ftype in missing | dir) ;; *) not_regular signatures ;; esac
valid=0
for fp in $fps; do
  sig=signatures/$fp.sig
  probe "$home/$sig"
  [ "$ftype" != missing ] || continue
  not_regular "$sig"
  name=$(cat "$tmp/key-$fp.name")
  bad_sig="the manifest or the signature was changed after signing; do not install this bundle"
  [ "$fsize" = 64 ] || die 5 "signature $sig of trusted key $name is $fsize bytes, not 64: it does not verify" "$bad_sig"
  copy "$home/$sig" 65 "$tmp/sig" || die 6 "cannot read $sig"
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
if [ "$one_drive" = 1 ] && [ ! -s "$tmp/volumes" ]; then # not split: one directory holds the whole bundle
  one_drive=0
  bundle=$home
  printf '%s\n' "$home" >"$tmp/dirs"
fi

if [ "$expires" != - ] && [ "$allow_expired" = 0 ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  awk -v now="$now" -v end="$expires" 'BEGIN { exit !(now < end) }' ||
    die 5 "the bundle expired at $expires" "ask for a fresh bundle, or pass --allow-expired if you accept an old one"
fi

# --- 5. rollback: the same state file as 'airgap install' ----------------------------------------------
manifest_sha256=$(sha_of "$tmp/manifest.json") || die 6 "cannot hash $tmp/manifest.json"
if [ "$one_drive" = 1 ]; then
  # the volumes, as the signed manifest gives them: each path on one volume, each volume with one listing
  bad=$(awk 'NF != 2 || $2 !~ /^vol-[0-9][0-9][0-9]?$/ { print $2; exit }' "$tmp/volumes")
  [ -z "$bad" ] || die 3 "manifest.json names a volume airgap never writes: $bad" "do not use this bundle"
  bad=$(awk '{ print $1 }' "$tmp/volumes" | sort | uniq -d | head -n 1)
  [ -z "$bad" ] || die 3 "manifest.json puts $bad on two volumes" "do not use this bundle"
  bad=$(awk 'NR == FNR { on[$1] = 1; next } !($0 in on) { print; exit }' "$tmp/volumes" "$tmp/listed")
  [ -z "$bad" ] || die 3 "manifest.json lists $bad on no volume" "do not use this bundle"
  bad=$(awk 'NR == FNR { l[$0] = 1; next } !($1 in l) { print $1; exit }' "$tmp/listed" "$tmp/volumes")
  [ -z "$bad" ] || die 3 "manifest.json puts $bad on a volume but does not list it" "do not use this bundle"
  awk '!seen[$2]++ { print $2 }' "$tmp/volumes" >"$tmp/vols"
  awk '$1 ~ /^volume-[0-9]+\.txt$/' "$tmp/volumes" >"$tmp/listings"
  bad=$(awk 'NR == FNR { n[$2]++; next } n[$0] != 1 { print; exit }' "$tmp/listings" "$tmp/vols")
  [ -z "$bad" ] || die 3 "manifest.json gives volume $bad no single listing (volume-NN.txt)" "do not use this bundle"
  first_vol=$(head -n 1 "$tmp/vols")
  nvols=$(($(wc -l <"$tmp/vols")))
  manifest_size=$(($(wc -c <"$tmp/manifest.json")))
  label="$bundle_name sequence $sequence"
  first_listing=$(awk -v v="$first_vol" '$2 == v { print $1; exit }' "$tmp/listings")
  lexists "$home/$first_listing" || die 4 "manifest.json in $home is not on the bundle's first volume ($first_vol: its listing is missing there)" \
    "the discs or folders were mixed up, or another bundle's manifest was added; copy the bundle again"
  : >"$tmp/dirs" # nothing is read but from the disc that holds it
  : >"$tmp/athand"
  : >"$tmp/seen"
  : >"$tmp/refused"
fi
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
  scan_dir "$dir" "$where"
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
# nothing of them is used (read from one drive, each disc's are checked as it comes)
if [ "$one_drive" = 0 ]; then
  while read -r _ _ path; do
    [ "$path" = "$plan" ] || [ "$path" = "$blocks" ] || fetch "$path"
  done <"$tmp/files"
fi
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

# record_state: remember the newest sequence installed (never lowered by --allow-downgrade), as
# 'airgap install' does after a load, or when every image was already present
record_state() {
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
}

# --- 8. never move a tag silently; every image already there under all its names: nothing to load ------
present=1
while read -r op id refs; do
  [ "$op" = image ] || continue
  docker image inspect "$id" >/dev/null 2>&1 </dev/null || present=0
  for ref in $refs; do
    current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null </dev/null) || current=
    [ "$current" = "$id" ] || present=0
    if [ -n "$current" ] && [ "$current" != "$id" ] && [ "$replace" = 0 ]; then
      die 7 "tag $ref already names image $current, the bundle has $id" "pass --replace to move the tag to the bundle's image"
    fi
  done
done <"$tmp/ops"
if [ "$present" = 1 ]; then # like 'airgap install': no part is read (nor, from one drive, another disc asked for)
  while read -r op id refs; do
    [ "$op" = image ] || continue
    out "already present: ${refs:-(untagged)}  $id"
  done <"$tmp/ops"
  record_state
  exit 0
fi

# --- 9. every part the plan needs is there, a regular file of the right size, before anything is sent --
# (read from one drive, each disc's parts are checked so as it comes, before a part is read from it)
if [ "$one_drive" = 0 ]; then
  while read -r op _ size path; do
    [ "$op" = part ] || continue
    locate "$path" || die 4 "part $path is missing$(on_volume "$path")" \
      "copy it again from the original medium, or mount the medium that holds it and pass it with --from"
    probe "$src"
    not_regular "part $path"
    [ "$fsize" = "$size" ] || die 4 "part $path is $fsize bytes, the manifest says $size" "copy it again from the original medium"
  done <"$tmp/ops"
fi

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
failed() { # CODE MESSAGE: why the upload's feeder stopped (CODE 'pipe': the engine stopped reading)
  printf '%s\n' "$1" >"$tmp/emit-failed"
  printf '%s\n' "$2" >"$tmp/emit-failed.msg"
  : >"$tmp/emit-failed.hint"
}
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
emit_ops() { # OPS: send the plan's lines in OPS
  while read -r op a b c; do
    case $op in
    block) dd if="$tmp/blocks" bs=512 skip="$a" count="$b" 2>/dev/null || { failed pipe "cannot send the plan's blocks"; return 1; } ;;
    part) emit_part "$a" "$b" "$c" || return 1 ;;
    zero) dd if=/dev/zero bs="$a" count=1 2>/dev/null || { failed pipe "cannot send tar padding"; return 1; } ;;
    esac
  done <"$1"
}
emit() {
  in_upload=1 # a die here ends this feeder only; the main script reports it once the engine has stopped
  if [ "$one_drive" = 1 ]; then emit_discs; else emit_ops "$tmp/ops"; fi
}
needs=$(grep -c '^base ' "$tmp/ops")
if [ "$needs" -gt 0 ]; then
  say "note: this is a delta bundle: the engine must already hold $needs layer(s) of its base bundle (install that first)"
fi
say "loading into Docker (each part is checked against the signed manifest as it goes)..."
{ emit || :; } | docker load >"$tmp/load" 2>&1 3<&-
loaded=$?
emit_failed=$(cat "$tmp/emit-failed" 2>/dev/null) || emit_failed=
emit_msg=$(cat "$tmp/emit-failed.msg" 2>/dev/null) || emit_msg=
emit_hint=$(cat "$tmp/emit-failed.hint" 2>/dev/null) || emit_hint=
case $emit_failed in
4) die 4 "$emit_msg; the upload was cut off before its end, so the engine loaded nothing" \
  "${emit_hint:-copy the named part again from the original medium, then run the installer again}" ;;
6) die 6 "$emit_msg; the upload was cut off before its end, so the engine loaded nothing" \
  "${emit_hint:-check the medium and the room in TMPDIR, then run the installer again}" ;;
[2-7]) die "$emit_failed" "$emit_msg; the upload was cut off before its end, so the engine loaded nothing" "$emit_hint" ;;
esac
if [ "$loaded" != 0 ] && [ "$needs" -gt 0 ] && grep -q 'no such file' "$tmp/load"; then
  die 2 "docker load failed: the engine lacks layers of this delta's base bundle" "install the base bundle first, or use 'airgap install --base'"
fi
[ "$loaded" = 0 ] || die 6 "docker load failed: $(tail -n 1 "$tmp/load")" "check the Docker engine and its free disk space"
[ ! -f "$tmp/emit-failed" ] || die 6 "$emit_msg" "check the Docker engine and run the installer again"

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
record_state
exit 0

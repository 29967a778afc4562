#!/bin/sh
# Install an airgap bundle without Python: check the signature with openssl, every part and file with
# sha256sum, then stream the parts through zstd into 'docker load'.  POSIX sh (dash, busybox ash).
#
#   sh installer/install.sh --trust SIGNER.pub [--replace] [--allow-expired] [--platform OS/ARCH]
#                           [--from DIR ...] [BUNDLE]
#
# BUNDLE defaults to the bundle this script sits in; --from adds directories holding more parts (the
# other volumes of a bundle split over several media).  Needs docker, openssl (1.1.1 or 3.x), sha256sum,
# zstd, awk and dd.  Exit codes are airgap's: 0 ok, 2 usage, 3 not a bundle, 4 damaged or missing part,
# 5 signature or expiry, 6 Docker or tools missing, 7 a tag would move.
#
# Like 'airgap install', it never moves a tag silently and loads nothing when any check fails; unlike
# it, it reads every part twice (check, then load) and keeps no rollback state.
set -u

usage() {
  echo "usage: install.sh --trust SIGNER.pub [--replace] [--allow-expired] [--platform OS/ARCH] [--from DIR ...] [BUNDLE]" >&2
  exit 2
}

die() {
  code=$1
  echo "error: $2" >&2
  if [ -n "${3:-}" ]; then echo "hint: $3" >&2; fi
  exit "$code"
}

trust=
replace=0
allow_expired=0
platform=
bundle=
from=
while [ $# -gt 0 ]; do
  case $1 in
  --trust) [ $# -ge 2 ] || usage; trust=$2; shift 2 ;;
  --trust=*) trust=${1#--trust=}; shift ;;
  --replace) replace=1; shift ;;
  --allow-expired) allow_expired=1; shift ;;
  --platform) [ $# -ge 2 ] || usage; platform=$2; shift 2 ;;
  --platform=*) platform=${1#--platform=}; shift ;;
  --from) [ $# -ge 2 ] || usage; [ -d "$2" ] || die 2 "--from $2 is not a directory"
    from="$from$(cd "$2" && pwd)
"; shift 2 ;;
  -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
  -*) usage ;;
  *) [ -z "$bundle" ] || usage; bundle=$1; shift ;;
  esac
done
[ -n "$trust" ] || die 2 "--trust SIGNER.pub is required" "give the public key of the security team that signed the bundle"
[ -f "$trust" ] && [ -r "$trust" ] || die 2 "cannot read public key $trust"
case $trust in /*) ;; *) trust=$(pwd)/$trust ;; esac
if [ -z "$bundle" ]; then
  bundle=$(cd "$(dirname "$0")/.." && pwd) || die 2 "cannot find the bundle around $0"
fi
cd "$bundle" 2>/dev/null || die 2 "bundle $bundle is not a directory" "pass the bundle directory"
bundle=$(pwd)

for tool in docker openssl sha256sum zstd awk dd; do
  command -v "$tool" >/dev/null 2>&1 || die 6 "$tool is not installed" "install it (Debian: docker.io, openssl, coreutils, zstd, mawk)"
done
[ -f manifest.json ] || die 3 "$bundle/manifest.json is missing: this is not a complete bundle" "pack or copy the bundle again"

tmp=$(mktemp -d) || die 6 "cannot create a temporary directory"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# 1. a trusted signature over the exact bytes of manifest.json
signed=0
for sig in signatures/*.sig; do
  [ -f "$sig" ] || continue
  if openssl pkeyutl -verify -pubin -inkey "$trust" -rawin -in manifest.json -sigfile "$sig" >/dev/null 2>&1; then
    signed=1
    break
  fi
done
[ "$signed" = 1 ] || die 5 "manifest.json carries no valid signature by $trust" \
  "check that --trust names the signer's public key; never install a bundle that fails this"

# 2. the signed manifest: airgap writes it canonically (sorted keys, two-space indent, one field a line)
grep -q '^  "schema_version": 1,$' manifest.json || die 3 "manifest.json is not schema_version 1" "use airgap's Python installer"
expires=$(awk -F'"' '$0 ~ /^  "expires": "/ { print $4 }' manifest.json)
if [ -n "$expires" ] && [ "$allow_expired" = 0 ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  awk -v now="$now" -v end="$expires" 'BEGIN { exit !(now < end) }' ||
    die 5 "the bundle expired at $expires" "ask for a fresh bundle, or pass --allow-expired if you accept an old one"
fi

# 3. every part and file against its sha256 in the manifest
awk -F'"' '$2 == "path" { p = $4 } $2 == "sha256" && p != "" { print $4 "  " p; p = "" }' manifest.json >"$tmp/sums"
bad=$(grep -Ev '^[0-9a-f]{64}  (parts/[0-9a-f]{64}\.[0-9]{5}\.zst|installer/[A-Za-z0-9_+-][A-Za-z0-9._+/-]*|volume-[0-9]{2,3}\.txt)$' "$tmp/sums" | head -n 1)
[ -z "$bad" ] || die 3 "manifest.json lists a path airgap never writes: ${bad#*  }" "do not use this bundle"
grep -Eq '(  |/)\.\.(/|$)' "$tmp/sums" && die 3 "manifest.json lists a path outside the bundle" "do not use this bundle"
[ -s "$tmp/sums" ] || die 3 "manifest.json lists no part"
if [ -n "$from" ]; then
  # a view of the bundle with every part found in the bundle or a --from directory
  mkdir "$tmp/view" || die 6 "cannot create a temporary directory"
  nl='
'
  while read -r _ path; do
    found=
    set -f
    IFS=$nl
    for dir in $bundle$nl$from; do
      if [ -f "$dir/$path" ]; then found=$dir/$path; break; fi
    done
    unset IFS
    set +f
    [ -n "$found" ] || continue
    mkdir -p "$tmp/view/$(dirname "$path")" && ln -s "$found" "$tmp/view/$path" || die 6 "cannot link $path"
  done <"$tmp/sums"
  cd "$tmp/view" || die 6 "cannot enter $tmp/view"
fi
total=$(wc -l <"$tmp/sums")
echo "checking $total parts and files against the signed manifest..." >&2
sha256sum -c "$tmp/sums" >"$tmp/check" 2>/dev/null
failed=$(grep -v ': OK$' "$tmp/check" | head -n 1)
[ -z "$failed" ] || die 4 "${failed%%:*} is missing or does not match its sha256 in the manifest" \
  "copy the named file again from the original medium"

# 4. the load plan for this engine's platform
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
plan=installer/docker-$(echo "$platform" | tr / -).plan
if [ ! -f "$plan" ]; then
  set -- installer/docker-*.plan
  if [ "$#" = 1 ] && [ -f "$1" ] && [ "$explicit" = 0 ]; then
    plan=$1
    echo "note: the bundle is for $(sed -n 's/^# airgap docker-load plan v1 for //p' "$plan"), the engine is $platform; loading it anyway" >&2
  else
    die 2 "the bundle has no image for $platform" "choose one with --platform"
  fi
fi
blocks=${plan%.plan}.blocks

# 5. never move a tag silently
while read -r op id refs; do
  [ "$op" = image ] || continue
  for ref in $refs; do
    current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || current=
    if [ -n "$current" ] && [ "$current" != "$id" ] && [ "$replace" = 0 ]; then
      die 7 "tag $ref already names image $current, the bundle has $id" "pass --replace to move the tag to the bundle's image"
    fi
  done
done <"$plan"

# 6. stream a docker-save archive into the engine: headers from the plan's blocks, layers from the parts
emit() {
  while read -r op a b; do
    case $op in
    block) dd if="$blocks" bs=512 skip="$a" count="$b" 2>/dev/null || return 1 ;;
    part) zstd -dcq <"$a" || return 1 ;;
    zero) dd if=/dev/zero bs="$a" count=1 2>/dev/null || return 1 ;;
    image | base | "#"*) ;;
    *) return 1 ;;
    esac
  done <"$plan"
}
needs=$(grep -c '^base ' "$plan")
if [ "$needs" -gt 0 ]; then
  echo "note: this is a delta bundle: the engine must already hold $needs layer(s) of its base bundle (install that first)" >&2
fi
echo "loading into Docker..." >&2
{ emit || : >"$tmp/emit-failed"; } | docker load >"$tmp/load" 2>&1
loaded=$?
if [ -f "$tmp/emit-failed" ]; then
  die 4 "reading the parts failed while loading; the engine got an incomplete archive and loaded nothing" "run the installer again"
fi
if [ "$loaded" != 0 ] && [ "$needs" -gt 0 ] && grep -q 'no such file' "$tmp/load"; then
  die 2 "docker load failed: the engine lacks layers of this delta's base bundle" "install the base bundle first, or use 'airgap install --base'"
fi
[ "$loaded" = 0 ] || die 6 "docker load failed: $(tail -n 1 "$tmp/load")" "check the Docker engine and its free disk space"

# 7. the engine holds the bundle's images under their names
while read -r op id refs; do
  [ "$op" = image ] || continue
  docker image inspect "$id" >/dev/null 2>&1 || die 6 "the engine did not keep image $id after loading it"
  for ref in $refs; do
    current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || current=
    [ "$current" = "$id" ] || die 6 "after loading, tag $ref does not name image $id"
  done
  echo "loaded: ${refs:-(untagged)}  $id"
done <"$plan"
exit 0

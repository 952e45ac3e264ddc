#!/bin/sh
# Makes a UWS_SRC directory for the uWebSockets peer: DEST/uWebSockets and
# DEST/uSockets, each the pinned commit (PINS) as a plain tree, with a
# `.pinned` file naming that commit, which build.sh checks.
#
#   benches/peers/uws/get-sources.sh DEST [UWS_GIT_DIR USOCKETS_GIT_DIR]
#
# The two git directories are clones or bare mirrors of
# https://github.com/uNetworking/uWebSockets and .../uSockets holding the
# pinned commits; by default they are cloned from GitHub into DEST/.git-*.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: get-sources.sh DEST [UWS_GIT_DIR USOCKETS_GIT_DIR]}
uws_git=${2:-}
usockets_git=${3:-}
mkdir -p "$dest"

grep -v '^#' "$here/PINS" | while read -r name commit describe; do
    case $name in
    uWebSockets) git_dir=$uws_git ;;
    uSockets) git_dir=$usockets_git ;;
    *) continue ;;
    esac
    if [ -z "$git_dir" ]; then
        git_dir=$dest/.git-$name
        [ -d "$git_dir" ] || git clone --bare --quiet "https://github.com/uNetworking/$name.git" "$git_dir"
    fi
    git --git-dir="$git_dir" cat-file -e "$commit^{commit}" || {
        echo "$git_dir does not have $name $commit" >&2
        exit 1
    }
    rm -rf "${dest:?}/$name"
    mkdir -p "$dest/$name"
    git --git-dir="$git_dir" archive "$commit" | tar -x -C "$dest/$name"
    echo "$commit" >"$dest/$name/.pinned"
    echo "$name $describe ($commit) in $dest/$name"
done

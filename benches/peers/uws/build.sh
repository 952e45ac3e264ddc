#!/bin/sh
# Builds the uWebSockets peer: SRC_DIR/uSockets (epoll, no SSL) and chat.cpp
# with SRC_DIR/uWebSockets (no zlib), -O3 with LTO, into OUT_DIR/uws-chat.
#
#   benches/peers/uws/build.sh SRC_DIR OUT_DIR
#
# SRC_DIR holds uWebSockets/ and uSockets/ at the commits PINS names: git
# checkouts (HEAD is checked, and that nothing tracked is changed) or trees
# from get-sources.sh (their `.pinned` file is checked). Anything else is
# refused, with the reason on stderr. A build whose inputs (the commits,
# chat.cpp, this script, the compilers) are those of the last is not redone.
# Nothing is written under SRC_DIR or the repository.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: build.sh SRC_DIR OUT_DIR}
out=${2:?usage: build.sh SRC_DIR OUT_DIR}
CC=${CC:-cc}
CXX=${CXX:-g++}

for tool in "$CC" "$CXX"; do
    command -v "$tool" >/dev/null || {
        echo "no $tool: apt-get install -y build-essential" >&2
        exit 1
    }
done

# The commit a source tree is at, by git or by get-sources.sh's stamp.
commit_of() {
    if [ -e "$1/.git" ]; then
        if [ -n "$(git -C "$1" status --porcelain --untracked-files=no)" ]; then
            echo "$1 has local changes" >&2
            return 1
        fi
        git -C "$1" rev-parse HEAD
    elif [ -f "$1/.pinned" ]; then
        cat "$1/.pinned"
    else
        echo "$1: neither a git checkout nor a tree from get-sources.sh (no .pinned)" >&2
        return 1
    fi
}

grep -v '^#' "$here/PINS" | while read -r name commit describe; do
    [ -d "$src/$name" ] || {
        echo "no $src/$name: see benches/peers/README.md" >&2
        exit 1
    }
    have=$(commit_of "$src/$name") || exit 1
    [ "$have" = "$commit" ] || {
        echo "$src/$name is at $have, not the pinned $name $describe ($commit)" >&2
        exit 1
    }
done

mkdir -p "$out/obj"
stamp=$( (cat "$here/PINS" "$here/chat.cpp" "$0"; "$CC" --version; "$CXX" --version) | cksum)
if [ -x "$out/uws-chat" ] && [ "$(cat "$out/build.stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
rm -f "$out/uws-chat" "$out/build.stamp" "$out"/obj/*.o

# uSockets as its Makefile builds it (the same files and defines, -O3 -flto),
# but with the objects in OUT_DIR: LIBUS_NO_SSL, and epoll, its default on
# Linux (no WITH_LIBUV, WITH_IO_URING or WITH_ASIO).
for c in "$src"/uSockets/src/*.c "$src"/uSockets/src/eventing/*.c \
    "$src"/uSockets/src/crypto/*.c "$src"/uSockets/src/io_uring/*.c; do
    name=$(echo "${c#"$src"/uSockets/src/}" | tr / _)
    "$CC" -std=c11 -O3 -flto -DLIBUS_NO_SSL -I"$src/uSockets/src" -c "$c" -o "$out/obj/${name%.c}.o"
done

# The peer, as uWebSockets' own build.c builds its examples, less
# -march=native (Eddy is built for the generic target too) and zlib
# (UWS_NO_ZLIB: no permessage-deflate).
"$CXX" -std=c++20 -O3 -flto=auto -DUWS_NO_ZLIB -DLIBUS_NO_SSL \
    -I"$src/uWebSockets/src" -I"$src/uSockets/src" \
    "$here/chat.cpp" "$out"/obj/*.o -o "$out/uws-chat"
echo "$stamp" >"$out/build.stamp"

#!/bin/sh
# Print the path of a Python >= 3.12 (the Naylence packages need it), or say in
# one line on stderr why there is none and exit 1.
#
# PYTHON, when set, is the user's choice: it is used, or refused in one line
# that says why and names one that would do; never silently replaced by
# another. Unset, the first that fits of python3.13, python3.12, python3
# (which honours .python-version under pyenv), then any pyenv-installed 3.12+.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
discover() {
    for candidate in python3.13 python3.12 python3; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if ok "$path"; then echo "$path"; return 0; fi
    done
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for path in "$root"/versions/3.1[2-9]*/bin/python3; do
        if [ -x "$path" ] && ok "$path"; then echo "$path"; return 0; fi
    done
    return 1
}
if [ -n "${PYTHON:-}" ]; then
    path=$(command -v "$PYTHON" 2>/dev/null)
    if [ -n "$path" ] && ok "$path"; then echo "$path"; exit 0; fi
    if [ -z "$path" ]; then
        why="is not a command found on PATH"
    else
        why="is $("$path" --version 2>&1 | head -n 1), and persistent-agent needs Python >= 3.12"
    fi
    if other=$(discover); then
        fix="$other would do (make PYTHON=$other), or leave PYTHON unset to use it"
    else
        fix="install Python 3.12 or later and point PYTHON at it"
    fi
    echo "error: PYTHON=$PYTHON $why; $fix" >&2
    exit 1
fi
if discover; then exit 0; fi
echo "error: no Python >= 3.12 found (tried python3.13, python3.12, python3, pyenv); install one or run: make PYTHON=/path/to/python3.12" >&2
exit 1

#!/bin/sh
# Print the path of a Python >= 3.12 (the Naylence packages need it), or say in
# one line on stderr that there is none and exit 1. Tried in order: $PYTHON,
# python3.13, python3.12, python3 (which honours .python-version under pyenv),
# then any pyenv-installed 3.12+.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
for candidate in ${PYTHON:-} python3.13 python3.12 python3; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if ok "$path"; then echo "$path"; exit 0; fi
done
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for path in "$root"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$path" ] && ok "$path"; then echo "$path"; exit 0; fi
done
echo "error: no Python >= 3.12 found (tried \$PYTHON, python3.13, python3.12, python3, pyenv); install one or run: make PYTHON=/path/to/python3.12" >&2
exit 1

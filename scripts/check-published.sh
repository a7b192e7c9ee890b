#!/usr/bin/env bash
# A published contract version is frozen. contracts/entities/published.lock names each
# one with the fingerprint of its declaration, and the contract tests refuse a
# declaration that no longer matches its line; this check closes the other door: a
# line, once committed, is never edited or removed, so the lock cannot be changed to let
# an edit through. Every line of every committed version of the lock must still be in
# the working copy's lock. (On a shallow clone only the history fetched is checked.)
set -euo pipefail
cd "$(dirname "$0")/.."
lock=contracts/entities/published.lock
[ -f "$lock" ] || { echo "$lock is missing" >&2; exit 1; }
lines() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' | sed 's/[[:space:]]*#.*//; s/[[:space:]]*$//'; }
current=$(lines < "$lock" | sort -u)
status=0
for commit in $(git log --format=%H -- "$lock"); do
  git cat-file -e "$commit:$lock" 2>/dev/null || continue
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    if ! grep -qxF -- "$line" <<<"$current"; then
      echo "$lock: the line \"$line\" (published in ${commit:0:12}) was edited or removed: a published version is frozen; restore the line and declare a new version instead" >&2
      status=1
    fi
  done < <(git show "$commit:$lock" | lines)
done
exit "$status"

#!/usr/bin/env bash
# buf breaking against the recorded baseline of the released contract
# (contract/released.binpb), not against the previous commit: a breaking edit must
# not pass just because a later commit in the same push leaves the protos alone.
# A deliberate break re-records the baseline (`make contract-baseline`) in the same
# commit, and says so in its message.
set -euo pipefail
buf=$1
"$buf" breaking --against contract/released.binpb

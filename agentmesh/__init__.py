"""agentmesh: OpenAI Agents SDK agents as a service (see README.md)."""

import os

# gRPC's fork handlers are for processes that fork and go on running Python; ours
# only fork to exec (the sandbox, servers), and with them a child forked while
# other threads were in gRPC could crash before its exec (a code guardrail's
# sandbox died of SIGSEGV now and then). Read when gRPC starts, so set on import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

// agentmesh from TypeScript: create an agent, list it, stream a run, and read the
// structured error of a bad request. The stubs in src/gen are generated from
// protos/ by `npm run generate`; the transport is connect-node's.
//
//   AGENTMESH_TARGET=http://127.0.0.1:50051 AGENTMESH_API_KEY=am_... npm run example
//   AGENTMESH_TARGET=http://127.0.0.1:8080 AGENTMESH_TRANSPORT=grpc-web ... npm run example
//
// Native gRPC (HTTP/2) reaches the mesh itself or the gateway; gRPC-Web (HTTP/1.1,
// what a browser speaks) reaches the gateway, whose Envoy turns it into gRPC.
// Each step prints one JSON line, so a program can read what happened.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import { RegistryService } from "./gen/agentmesh/registry/v1/registry_pb.js";
import { Run_State, RunnerService } from "./gen/agentmesh/runner/v1/runner_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

function setting(name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") {
    throw new Error(`set ${name}`);
  }
  return value;
}

function report(step: string, fields: Record<string, unknown>): void {
  console.log(JSON.stringify({ step, ...fields }));
}

async function main(): Promise<void> {
  const baseUrl = setting("AGENTMESH_TARGET", "http://127.0.0.1:50051");
  const apiKey = setting("AGENTMESH_API_KEY");
  const kind = setting("AGENTMESH_TRANSPORT", "grpc");

  // Every call carries the caller's API key.
  const authorize: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
  const options = { baseUrl, interceptors: [authorize] };
  let transport;
  if (kind === "grpc") {
    transport = createGrpcTransport(options);
  } else if (kind === "grpc-web") {
    transport = createGrpcWebTransport({ ...options, httpVersion: "1.1" });
  } else {
    throw new Error(`AGENTMESH_TRANSPORT is grpc or grpc-web, not ${kind}`);
  }
  const registry = createClient(RegistryService, transport);
  const runner = createClient(RunnerService, transport);

  const agent = await registry.createAgent({
    agent: { displayName: "TypeScript example", instructions: "Answer briefly." },
  });
  report("created", { name: agent.name, displayName: agent.displayName, etag: agent.etag });

  const listed = await registry.listAgents({ pageSize: 50 });
  report("listed", { names: listed.agents.map((a) => a.name) });

  // The run's events as they happen; the last one carries the finished run.
  const kinds: string[] = [];
  let text = "";
  for await (const event of runner.streamRun({ agent: agent.name, input: "Hello from TypeScript" })) {
    kinds.push(event.event.case ?? "none");
    if (event.event.case === "textDelta") {
      text += event.event.value.delta;
    }
    if (event.event.case === "runFinished") {
      const run = event.event.value;
      report("streamed", {
        events: kinds,
        sequence: event.sequence.toString(), // int64 is a bigint
        run: run.name,
        state: Run_State[run.state],
        text,
      });
    }
  }

  // A bad request: INVALID_ARGUMENT, with google.rpc.BadRequest naming the field.
  try {
    await registry.createAgent({ agent: { displayName: "" } });
    report("bad-request", { error: null });
  } catch (caught) {
    const error = ConnectError.from(caught);
    report("bad-request", {
      code: Code[error.code],
      message: error.rawMessage,
      violations: error
        .findDetails(BadRequestSchema)
        .flatMap((bad) => bad.fieldViolations.map((v) => ({ field: v.field, description: v.description }))),
      reasons: error.findDetails(ErrorInfoSchema).map((info) => info.reason),
    });
  }

  // Another tenant's agent, or one that never was: NOT_FOUND either way.
  try {
    await registry.getAgent({ name: "agents/no-such-agent" });
  } catch (caught) {
    report("not-found", { code: Code[ConnectError.from(caught).code] });
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof ConnectError ? `${Code[error.code]}: ${error.rawMessage}` : error);
  process.exit(1);
});

// The original example's sentinel; FAME_LISTENER_PORT picks its port. Unlike the
// SDK's default (every address, no authentication), it listens on loopback only:
// the tests never expose a node beyond this machine.
import { Sentinel } from "@naylence/runtime";
import { SENTINEL_CONFIG } from "@naylence/agent-sdk";

const listeners = SENTINEL_CONFIG.node.listeners.map((listener) => ({
  ...listener,
  host: "127.0.0.1",
}));
const rootConfig = { ...SENTINEL_CONFIG, node: { ...SENTINEL_CONFIG.node, listeners } };

await Sentinel.aserve({ rootConfig, logLevel: "warning" });
